"""SQLite, the single-machine default, with trials side by side: four at once on one new file.

Started together on a file that does not exist yet, each process used to run MLflow's schema
migrations itself, and nearly all of them failed. While they run, a reader also keeps one
snapshot of the store open for longer than MLflow's busy timeout, as a notebook or a long query
of the MLflow UI may; in SQLite's default rollback-journal mode that ends in "database is locked"
for processes opening the store. kdflow's entry points set the file up first (kdflow/store.py).
Without that, all eight trials of an earlier, larger version of this test failed; with the
schema created once but without WAL, two of eight failed with "database is locked", and of four
(as here), one, in each of two tries.
"""

import contextlib
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, SHORT, ProjectStore

pytestmark = pytest.mark.slow

TRIALS = 4  # Enough to meet the lock: see above. Each is a process importing TensorFlow.
HOLD_SECONDS = 25  # Longer than MLflow's busy timeout of 20 s.


def hold_a_snapshot(database, processes) -> None:
    """Once the store has its schema, keep a read transaction open for HOLD_SECONDS."""
    while any(process.poll() is None for process in processes):
        if database.exists():
            reader = sqlite3.connect(database, isolation_level=None)
            try:
                reader.execute("BEGIN")
                if reader.execute("SELECT count(*) FROM experiments").fetchone()[0]:
                    time.sleep(HOLD_SECONDS)
                    return
            except sqlite3.OperationalError:  # No tables yet, or busy creating them.
                pass
            finally:
                reader.close()  # Ends the transaction.
        time.sleep(0.2)


def test_four_trials_at_once_on_a_new_sqlite_file(tmp_path, fetched_mnist, monkeypatch):
    store = ProjectStore(tmp_path, fetched_mnist[1])
    database = tmp_path / "mlflow.db"
    processes = []
    for seed in range(1, TRIALS + 1):
        command = [sys.executable, str(ROOT / "entrypoints" / "student.py"), "--num_steps", SHORT["num_steps"],
                   "--eval_every", SHORT["eval_every"], "--seed", str(seed)]
        # Output to files: a full pipe would stop a process, maybe while it holds the database.
        with (tmp_path / f"trial{seed}.log").open("w") as log:
            processes.append(
                subprocess.Popen(command, cwd=tmp_path, env=store.env, stdout=log, stderr=subprocess.STDOUT)
            )
    try:
        hold_a_snapshot(database, processes)
        for process in processes:
            process.wait(timeout=600)
    finally:  # A test that failed leaves no trial running.
        for process in processes:
            if process.poll() is None:
                process.kill()

    for seed, process in enumerate(processes, start=1):
        output = (tmp_path / f"trial{seed}.log").read_text()
        assert process.returncode == 0, f"trial {seed}:\n{output[-5000:]}"
        assert "database is locked" not in output, f"trial {seed}:\n{output[-5000:]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    finished = store.runs("student")
    assert sorted(int(run.data.params["seed"]) for run in finished) == list(range(1, TRIALS + 1))
    with contextlib.closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


RACE_SCRIPT = """
import sys, time, types
import mlflow, numpy as np
from kdflow import store, tracking
store.prepare()
splits = types.SimpleNamespace(train_images=np.zeros((10, 28, 28), np.float32), train_labels=np.zeros(10, np.int64),
                               source="a test", dataset="mnist", digest="0" * 64)
with mlflow.start_run():
    time.sleep(max(0.0, float(sys.argv[1]) - time.time()))  # All at once: MLflow's own check-then-insert races.
    tracking.log_dataset("student", None, splits)
"""


def test_runs_that_log_a_new_dataset_at_once_all_record_it(tmp_path):
    runs = 8
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    start_at = time.time() + 12  # Past every process's imports and store set-up.
    processes = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, str(start_at)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(runs)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), "\n".join(output[-1500:] for output in outputs)
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as database:
        assert database.execute("SELECT count(*) FROM datasets").fetchone()[0] == 1
        assert database.execute("SELECT count(DISTINCT destination_id) FROM inputs").fetchone()[0] == runs
