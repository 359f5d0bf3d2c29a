"""Classify image files: `mlflow run . -e predict -P images=<file or folder> --env-manager local`."""

import sys

from kdflow import cli

if __name__ == "__main__":
    sys.exit(cli.predict_main())
