"""Real faults in the middle of a run: none may leave a run FINISHED, reused or counted.

Each test has a store of its own, so it passes alone and in any order. After each fault the run is
not FINISHED, has no run key (so no lookup reuses it and no table counts it), and says why.
"""

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from kdflow import config, data, tracking
from scripts.servers import free_port, wait_until_answers
from tests.conftest import MLFLOW, ROOT, ProjectStore, serving

pytestmark = pytest.mark.slow


@pytest.fixture
def own_store(tmp_path, fetched_mnist, monkeypatch) -> ProjectStore:
    store = ProjectStore(tmp_path, fetched_mnist[1])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    return store


def entry_point(store: ProjectStore, kind: str, *arguments: str) -> subprocess.CompletedProcess:
    """The entry point's script run directly (as `mlflow run` does), in the store's folder."""
    command = [sys.executable, str(ROOT / "entrypoints" / f"{kind}.py"), *arguments]
    return subprocess.run(command, cwd=store.folder, env=store.env, capture_output=True, text=True, timeout=600)


def assert_failed_and_never_reused(run, kind: str, statuses: set[str], error: str) -> None:
    assert run.info.status in statuses
    assert error in run.data.tags[tracking.ERROR_TAG]
    assert tracking.RUN_KEY_TAG not in run.data.tags
    # The canonical parameters: `mlflow run` logs them as typed (an empty value as '').
    params = json.loads(run.data.tags[tracking.PARAMS_TAG])
    parsed = config.parse_args(kind, [f"--{name}={value}" for name, value in params.items()])
    assert tracking.find_finished_run(kind, parsed, data.DATASET_DIGESTS["mnist"], run.info.experiment_id) is None


def test_a_diverging_loss_fails_the_run_naming_the_parameter(own_store):
    process = entry_point(own_store, "student", "--num_steps", "20", "--eval_every", "10", "--learning_rate", "1e38")
    assert process.returncode == 2, process.stderr[-3000:]
    assert "kdflow student: error: the training loss is nan by step 10" in process.stderr
    (run,) = own_store.runs("student", status="FAILED")
    assert_failed_and_never_reused(run, "student", {"FAILED"}, "learning_rate (1e+38)")
    assert mlflow.MlflowClient().search_model_versions("name = 'kd-student'") == []


def test_a_full_artifact_disk_fails_the_run_and_the_next_run_trains_again(own_store, tmp_path):
    """The artifact store is a 64 KiB tmpfs, already full: the model cannot be stored, nor error.txt."""
    artifacts = tmp_path / "mlruns"
    artifacts.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(artifacts)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        filler = os.open(artifacts / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError, match="No space left"):
                while True:
                    os.write(filler, b"\0" * 4096)
        finally:
            os.close(filler)
        arguments = ("--num_steps", "20", "--eval_every", "10")
        process = entry_point(own_store, "student", *arguments)
        assert process.returncode != 0
        assert "could not store error.txt" in process.stderr  # The failure path itself met the fault.
        (run,) = own_store.runs("student", status="FAILED")
        assert_failed_and_never_reused(run, "student", {"FAILED"}, "No space left on device")
    finally:
        subprocess.run(["umount", str(artifacts)], check=True)
    # With room again, the same parameters train again and finish.
    retried = entry_point(own_store, "student", *arguments)
    assert retried.returncode == 0, retried.stderr[-3000:]
    (finished,) = own_store.runs("student")
    assert finished.info.run_id != run.info.run_id and tracking.RUN_KEY_TAG in finished.data.tags


def test_a_tracking_server_killed_mid_run_and_restarted_leaves_the_run_failed(fetched_mnist, tmp_path, monkeypatch):
    """The server dies while a run trains, and is back before the run's process exits.

    MLflow's client retries a request for 30 seconds here (2 + 4 + 8 + 16 s between five retries):
    the run's next metrics fail after that window, and the server is back during the next one,
    while the run records its failure; that record must end it FAILED, never FINISHED.
    """
    uri = f"http://127.0.0.1:{free_port()}"
    command = [MLFLOW, "server", "--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1], "--workers", "1",
               "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--artifacts-destination", str(tmp_path / "art")]
    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "KDFLOW_CACHE_DIR": str(fetched_mnist[1]), **retries}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_answers(f"{uri}/health", server)
        job = subprocess.Popen(
            [sys.executable, str(ROOT / "entrypoints" / "student.py"), "--num_steps", "1000000", "--eval_every", "10"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in job.stdout:  # Wait until it is really training.
            if line.startswith("step 10:"):
                break
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    time.sleep(32)  # The failing request's retries are spent; the run is recording its failure.
    with serving(command, f"{uri}/health"):
        output, _ = job.communicate(timeout=300)
        assert job.returncode != 0, output[-3000:]
        (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert_failed_and_never_reused(run, "student", {"FAILED"}, "MlflowException")


def default_signals() -> None:
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)


@pytest.mark.parametrize("entry_point, stop", [("teacher", "Ctrl-C"), ("distill", "kill")])
def test_stopping_mlflow_run_ends_the_run_killed(own_store, entry_point, stop):
    """Ctrl-C reaches `mlflow run` and its job together; `kill` reaches `mlflow run` alone. A
    distillation stopped while it trains its own teacher stops that nested run as well."""
    command = [MLFLOW, "run", str(ROOT), "-e", entry_point, "--env-manager", "local",
               "-P", "num_steps=100000", "-P", "eval_every=10"]
    # As from a terminal: Ctrl-C and SIGTERM at their defaults in `mlflow run`, whatever this test
    # process inherited. A Python started with SIGINT ignored keeps ignoring it, and its children
    # too: in full-suite runs something had left SIGINT ignored here, and the job trained on.
    process = subprocess.Popen(command, cwd=own_store.folder, env=own_store.env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=default_signals)
    for line in process.stdout:  # Wait until it (or the teacher a distillation started) is really training.
        if line.startswith("step 10:"):
            break
    if stop == "Ctrl-C":
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:  # Say what it was doing.
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"`mlflow run` outlived {stop} by 60 s:\n{process.communicate()[0][-5000:]}") from None
    deadline = time.monotonic() + 60
    while mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'RUNNING'",
                             output_format="list") and time.monotonic() < deadline:
        time.sleep(1)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert sorted(run.data.tags[tracking.KIND_TAG] for run in runs) == sorted({entry_point, "teacher"})
    for run in runs:
        # The job ends its run KILLED; `mlflow run`, seeing its job stopped, may mark it FAILED first.
        assert_failed_and_never_reused(run, run.data.tags[tracking.KIND_TAG], {"KILLED", "FAILED"}, "KeyboardInterrupt")
    teacher = next(run for run in runs if run.data.tags[tracking.KIND_TAG] == "teacher")
    assert mlflow.MlflowClient().get_metric_history(teacher.info.run_id, "validation_accuracy")  # Kept.
