"""Sweep kdflow trials over a Ray cluster: `mlflow run . -e sweep --env-manager local`."""

import sys

from kdflow import jobs

if __name__ == "__main__":
    sys.exit(jobs.sweep_main(sys.argv[1:]))
