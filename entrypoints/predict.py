"""Classify image files: `mlflow run . -e predict -P images=<file or folder> --env-manager local`."""

import sys

from kdflow import predict

if __name__ == "__main__":
    sys.exit(predict.main())
