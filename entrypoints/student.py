"""Train a kdflow student: `mlflow run . -e student --env-manager local` calls this script."""

import sys

from kdflow import jobs

if __name__ == "__main__":
    sys.exit(jobs.main("student", sys.argv[1:]))
