"""Regenerate the results table of an experiment: `mlflow run . -e report --env-manager local`."""

import sys

from kdflow import cli

if __name__ == "__main__":
    sys.exit(cli.report_main(sys.argv[1:]))
