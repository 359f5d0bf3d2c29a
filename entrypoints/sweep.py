"""Sweep kdflow trials over a Ray cluster: `mlflow run . -e sweep --env-manager local`."""

import sys

from kdflow import cli

if __name__ == "__main__":
    sys.exit(cli.sweep_main(sys.argv[1:]))
