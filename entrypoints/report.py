"""Regenerate the results table of an experiment: `mlflow run . -e report --env-manager local`."""

import sys

from kdflow import jobs

if __name__ == "__main__":
    sys.exit(jobs.report_main(sys.argv[1:]))
