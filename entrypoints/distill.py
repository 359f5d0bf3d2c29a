"""Train a kdflow distill: `mlflow run . -e distill --env-manager local` calls this script."""

import sys

from kdflow import cli

if __name__ == "__main__":
    sys.exit(cli.main("distill", sys.argv[1:]))
