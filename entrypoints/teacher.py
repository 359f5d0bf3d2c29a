"""Train a kdflow teacher: `mlflow run . -e teacher --env-manager local` calls this script."""

import sys

from kdflow import cli

if __name__ == "__main__":
    sys.exit(cli.main("teacher", sys.argv[1:]))
