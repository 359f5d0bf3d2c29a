"""Train a kdflow teacher: `mlflow run . -e teacher --env-manager local` calls this script."""

import sys

from kdflow import jobs

if __name__ == "__main__":
    sys.exit(jobs.main("teacher", sys.argv[1:]))
