"""Train a kdflow student: `mlflow run . -e student --env-manager local` calls this script."""

import sys

from kdflow import cli

if __name__ == "__main__":
    sys.exit(cli.main("student", sys.argv[1:]))
