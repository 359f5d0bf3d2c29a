"""Real faults in the middle of a run: none may leave a run FINISHED, reused or counted.

Each test has a store of its own, so it passes alone and in any order. After each fault the run is
not FINISHED, has no run key (so no lookup reuses it and no table counts it), and says why; a
run whose process is gone does not stay RUNNING; and only a complete run's version holds an alias.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from kdflow import config, data, liveness, registry, tracking
from scripts.servers import free_port
from tests.conftest import MLFLOW, ROOT, ProjectStore, serving

pytestmark = pytest.mark.slow

PREDICT, END_ORPHANS = (str(Path(sys.executable).parent / name) for name in ("kdflow-predict", "kdflow-end-orphans"))


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
    assert tracking.find_finished_run(kind, tracking.run_key(kind, parsed, data.DATASETS["mnist"].digest), run.info.experiment_id) is None


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
    with serving(command, f"{uri}/health", crash=True):
        job = subprocess.Popen(
            [sys.executable, str(ROOT / "entrypoints" / "student.py"), "--num_steps", "1000000", "--eval_every", "10"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in job.stdout:  # Wait until it is really training.
            if line.startswith("step 10/"):
                break
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
        if line.startswith("step 10/"):
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


def test_a_run_stopped_after_registering_its_version_never_holds_the_alias(own_store):
    """Stopped between its registered version and its end, a run must not move the champion;
    and a version that a run which never completed holds the alias with (as older kdflow left
    it) loses it at the next promotion."""
    arguments = ("--num_steps", "60", "--eval_every", "20", "--recipe", "tuned")
    assert entry_point(own_store, "student", *arguments).returncode == 0
    client = mlflow.MlflowClient()
    alias = registry.champion_alias("student", config.Config(num_steps=60, eval_every=20, recipe="tuned").resolved())
    champion = client.get_model_version_by_alias("kd-student", alias)
    # A weak champion, so that the next student of its alias, at any seed, would win.
    client.set_model_version_tag("kd-student", champion.version, registry.VALIDATION_ACCURACY_TAG, "0.05")
    champion = client.get_model_version_by_alias("kd-student", alias)
    command = [sys.executable, str(ROOT / "entrypoints" / "student.py"), *arguments, "--seed", "14"]
    process = subprocess.Popen(command, cwd=own_store.folder, env=own_store.env, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("registered kd-student version"):
            process.send_signal(signal.SIGTERM)
            break
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130 and "is now @" not in output
    (stopped,) = own_store.runs("student", status="KILLED")
    (version,) = client.search_model_versions(f"run_id = '{stopped.info.run_id}'")
    assert float(version.tags[registry.VALIDATION_ACCURACY_TAG]) > float(champion.tags[registry.VALIDATION_ACCURACY_TAG])
    assert client.get_model_version_by_alias("kd-student", alias).version == champion.version
    assert_failed_and_never_reused(stopped, "student", {"KILLED"}, "KeyboardInterrupt")

    client.set_registered_model_alias("kd-student", alias, version.version)
    assert entry_point(own_store, "student", *arguments, "--seed", "13").returncode == 0
    complete = [v for v in client.search_model_versions("name = 'kd-student'") if v.run_id != stopped.info.run_id]
    best = max(complete, key=lambda v: (float(v.tags[registry.VALIDATION_ACCURACY_TAG]), -int(v.version)))
    assert client.get_model_version_by_alias("kd-student", alias).version == best.version


LONG_STUDENT = "student-seed12-num_steps=1000000-eval_every=10"  # the run name of long_students


def long_students(store: ProjectStore, count: int) -> list[subprocess.Popen]:
    """Students that train for hours, each in a process group of its own, once they really train."""
    command = [sys.executable, str(ROOT / "entrypoints" / "student.py"), "--num_steps", "1000000", "--eval_every", "10"]
    jobs = [subprocess.Popen(command, cwd=store.folder, env=store.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True) for _ in range(count)]
    for job in jobs:
        if not any(line.startswith("step 10/") for line in job.stdout):
            raise AssertionError(f"a student stopped before training (exit {job.wait()})")
        # Read on, keeping it for the test: a student prints about 5 kB a second, and once the
        # pipe's 64 kB are full it would block in a print and answer SIGTERM late or not at all.
        job.rest = []
        job.reader = threading.Thread(target=lambda job=job: job.rest.extend(job.stdout), daemon=True)
        job.reader.start()
    return jobs


def rest_of_output(job: subprocess.Popen, timeout: float) -> str:
    """What a long student printed after it began training, once it has exited."""
    job.wait(timeout=timeout)
    job.reader.join(timeout=30)
    return "".join(job.rest)


def end_orphans(store: ProjectStore) -> subprocess.CompletedProcess:
    process = subprocess.run([END_ORPHANS], cwd=store.folder, env=store.env, capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-3000:]
    return process


def test_runs_whose_process_was_killed_outright_are_ended_and_live_ones_left(own_store):
    killed, alive = long_students(own_store, 2)
    os.killpg(killed.pid, signal.SIGKILL)  # Nothing of it can end its run.
    killed.wait()
    try:
        assert len(own_store.runs("student", status="RUNNING")) == 2
        process = end_orphans(own_store)
        (ended,) = own_store.runs("student", status="FAILED")
        assert f"ended {LONG_STUDENT} ({ended.info.run_id}) FAILED: its process {killed.pid} on " in process.stdout
        assert_failed_and_never_reused(ended, "student", {"FAILED"}, "no longer exists; ended by kdflow-end-orphans")
        (running,) = own_store.runs("student", status="RUNNING")  # The live one beats on.
        assert json.loads(running.data.tags[liveness.PROCESS_TAG])["pid"] == alive.pid
    finally:
        alive.send_signal(signal.SIGTERM)
        alive.wait(timeout=60)
    assert len(own_store.runs("student", status="KILLED")) == 1


def test_a_run_that_failed_while_its_server_was_down_is_ended_once_it_is_back(fetched_mnist, tmp_path, monkeypatch):
    """The server dies for good while a run trains: the run cannot record its failure and stays
    RUNNING after its process exits; with the server back, kdflow-end-orphans ends it."""
    uri = f"http://127.0.0.1:{free_port()}"
    command = [MLFLOW, "server", "--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1], "--workers", "1",
               "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--artifacts-destination", str(tmp_path / "art")]
    store = ProjectStore(tmp_path, fetched_mnist[1])
    store.env.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})  # Each call fails at once.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with serving(command, f"{uri}/health", crash=True):
        (job,) = long_students(store, 1)
    output = rest_of_output(job, timeout=120)  # The server is gone: the next metrics fail, then so does the record.
    said = "".join(line for line in output.splitlines(keepends=True) if not line.startswith("step "))
    assert job.returncode != 0 and "could not store the FAILED status" in said, said[-8000:]
    with serving(command, f"{uri}/health"):
        (run,) = store.runs("student", status="RUNNING")
        assert f"ended {LONG_STUDENT} ({run.info.run_id}) FAILED" in end_orphans(store).stdout
        assert_failed_and_never_reused(mlflow.get_run(run.info.run_id), "student", {"FAILED"}, "no longer exists")


def listening_but_silent():
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


@pytest.mark.parametrize("answer", ["refused", "silent"])
def test_commands_fail_within_seconds_when_the_store_does_not_answer(own_store, tmp_path, answer):
    """Each kdflow command that needs the store says so in seconds, with its own exit status (3)."""
    listener = listening_but_silent() if answer == "silent" else None
    uri = f"http://127.0.0.1:{listener.getsockname()[1] if listener else free_port()}"
    env = {**own_store.env, "MLFLOW_TRACKING_URI": uri}
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(image)
    commands = {
        "distill": [sys.executable, str(ROOT / "entrypoints" / "distill.py")],
        "predict": [PREDICT, str(image)],
        "end-orphans": [END_ORPHANS],
    }
    try:
        for name, command in (commands.items() if answer == "refused" else [("distill", commands["distill"])]):
            started = time.monotonic()
            process = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            assert process.returncode == 3, (name, process.stderr[-3000:])
            assert f"kdflow {name}: error: the tracking store {uri} does not answer" in process.stderr
            assert time.monotonic() - started < 30  # About 15 s at most, plus starting Python.
    finally:
        if listener:
            listener.close()


def test_mlflow_run_fails_in_seconds_with_the_documented_settings(own_store, tmp_path):
    """`mlflow run` asks the store for a run before kdflow starts, retrying for minutes by default;
    README's faults table gives the settings that make it fail at once."""
    env = {**own_store.env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    started = time.monotonic()
    process = subprocess.run([MLFLOW, "run", str(ROOT), "-e", "distill", "--env-manager", "local"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert process.returncode == 1 and "Connection refused" in process.stderr
    assert time.monotonic() - started < 30


def test_a_bad_parameter_exits_2_from_the_entry_point(own_store):
    """Run directly (as `mlflow run` runs it, which reports any failed job as its own exit 1)."""
    process = entry_point(own_store, "distill", "--temperature", "-1")
    assert process.returncode == 2 and "kdflow distill: error: temperature must be a finite number > 0" in process.stderr
    (run,) = own_store.runs("distill", status="FAILED")
    assert run.data.tags[tracking.ERROR_TAG].startswith("ValueError: temperature") and tracking.RUN_KEY_TAG not in run.data.tags
