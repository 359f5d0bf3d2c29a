"""Sweeps on a real two-node Ray cluster, tracked by a real `mlflow server` on 127.0.0.1.

The cluster is a head and a second worker node on this machine (conftest's ``cluster``), one
CPU each; the tracking server keeps its runs in SQLite and proxies artifacts. Trials are short
(40 steps): accuracy is not judged here. Elsewhere: a sweep spread over two nodes with its
artifacts is tests/test_cluster_recipe.py's; a whole sweep reused, test_entrypoints.py's main
entry point test; a worker node lost and a killed driver's sweep resumed (refused while the
driver lives), tests/test_scale.py's faults.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from kdflow import experiments, sweeps, tracking, trials
from scripts.servers import free_port
from tests.conftest import MLFLOW, ROOT, SHORT, serving

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # tests/conftest.py says why

@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    uri = f"http://127.0.0.1:{free_port()}"
    command = [MLFLOW, "server", "--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1], "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "artifacts")]
    with serving(command, f"{uri}/health"):
        yield uri


@pytest.fixture
def own_experiment(tracking_server, monkeypatch, request):
    """An experiment of this test's own on the tracking server, for the sweep and this test's searches,
    so that no test counts another's runs and each passes alone or in any order."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.MlflowClient().create_experiment(request.node.name)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", request.node.name)
    return tracking_server


def sweep(cluster, tracking_uri, folder, **parameters) -> subprocess.CompletedProcess:
    command = [MLFLOW, "run", str(ROOT), "-e", "sweep", "--env-manager", "local"]
    for name, value in {"address": cluster.address, **SHORT, **parameters}.items():
        command += ["-P", f"{name}={value}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)


def children(parent_run_id: str):
    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        output_format="list",
    )


def test_asha_stops_weak_distillations_early_and_no_stopped_run_counts(cluster, own_experiment, tmp_path):
    # One teacher (at T=2) for a grid of distillations over temperature and loss weight; ASHA
    # compares the distillations only, at every evaluation each reports to Ray Tune.
    process = sweep(cluster, own_experiment, tmp_path, kinds="teacher,distill", temperature="1,8", loss="weighted",
                    hard_label_weight="0.1,0.9", seed="12", teacher_temperature="2", scheduler="asha",
                    num_steps="60", eval_every="10")
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    (parent,) = sweep_runs_in_experiment()
    distills = [run for run in children(parent.info.run_id) if run.data.tags[tracking.KIND_TAG] == "distill"]
    assert len(distills) == 4
    stopped = [run for run in distills if run.info.status != "FINISHED"]
    assert stopped, "ASHA stopped no distillation"
    client = mlflow.MlflowClient()
    for run in stopped:  # Ended KILLED, saying why, without a run key: never reused or counted.
        assert run.info.status == "KILLED" and "stopped the trial early" in run.data.tags[tracking.ERROR_TAG]
        assert tracking.RUN_KEY_TAG not in run.data.tags and "test_accuracy" not in run.data.metrics
        assert max(point.step for point in client.get_metric_history(run.info.run_id, "validation_accuracy")) < 60
    for run in distills:
        if run.info.status == "FINISHED":
            assert tracking.RUN_KEY_TAG in run.data.tags and "test_accuracy" in run.data.metrics
    trial_table = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="trials.csv"))
    assert sum(",stopped," in line for line in trial_table.read_text().splitlines()) == len(stopped)
    # Warm workers through stops: the five trials ran on the two nodes' first two workers, each
    # importing TensorFlow once. A stopped trial's worker that could not be reused would have been
    # replaced by a new one for the next trial on its node (and Ray Tune 2.60 would have failed that trial).
    worker_of = {run.info.run_id: run.data.tags[trials.WORKER_PID_TAG] for run in children(parent.info.run_id)}
    assert len(set(worker_of.values())) == 2, worker_of
    # Live reporting: a trial that ran to the end reported every evaluation to Ray Tune, then its scores.
    results = Path.home() / "ray_results" / f"sweep-{parent.info.run_id}"
    finished_trial = next(run for run in distills if run.info.status == "FINISHED").data.tags[trials.TRIAL_TAG]
    (reports,) = results.glob(f"*{finished_trial}*/result.json")
    steps = [json.loads(line).get("step") for line in reports.read_text().splitlines()]
    assert steps == list(range(10, 61, 10)) + [60]


def test_multi_node_sweep_refuses_a_local_tracking_store(cluster, tmp_path):
    process = sweep(cluster, f"sqlite:///{tmp_path}/mlflow.db", tmp_path, temperature="2")
    assert process.returncode != 0
    assert "2 nodes" in process.stderr and "mlflow server" in process.stderr


def test_sweeps_that_cannot_run_are_refused_naming_the_parameter(cluster, own_experiment, tmp_path):
    # A Ray address where no cluster answers (a closed port on this machine) and more CPUs per
    # trial than any node has would each wait for minutes, or for ever; both are refused at once.
    for parameters, named in (({"address": f"127.0.0.1:{free_port()}"}, "address: no Ray cluster answers"),
                              ({"cpus_per_trial": 2}, "cpus_per_trial: 2 is more than any node")):
        started = time.monotonic()
        process = sweep(cluster, own_experiment, tmp_path, kinds="student", **parameters)
        assert process.returncode != 0 and f"kdflow sweep: error: {named}" in process.stderr, process.stderr[-3000:]
        assert time.monotonic() - started < 120


def test_trials_that_fail_for_good_are_failed_runs_and_fail_the_sweep(cluster, own_experiment, tmp_path):
    process = sweep(cluster, own_experiment, tmp_path, kinds="student", seed="12,13", data_dir=str(tmp_path / "missing"))
    assert process.returncode != 0
    assert ("2 of 2 trials failed: student-seed12-num_steps=40-eval_every=20, student-seed13-num_steps=40-eval_every=20"
            in process.stderr), process.stderr[-3000:]
    (parent,) = sweep_runs_in_experiment()
    assert parent.info.status == "FAILED"
    trials = children(parent.info.run_id)
    # An error of the job's own would fail again: each trial is tried once (only dead workers are retried).
    assert len(trials) == 2
    assert all(run.info.status == "FAILED" and "missing" in run.data.tags[tracking.ERROR_TAG] for run in trials)
    trial_table = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="trials.csv")
    assert all(",failed," in line and "missing" in line for line in Path(trial_table).read_text().splitlines()[1:])


def test_a_sweep_into_a_new_experiment_trains_every_trial_without_importing_tensorflow_first(tmp_path):
    """Nothing finished has a trial's run key; on a machine without GPU drivers the driver computes the keys
    without TensorFlow (3 s), which it leaves to the trials."""
    script = (
        "import sys, mlflow\n"
        "from kdflow import experiments, sweeps\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "planned = sweeps.plan(experiments.parse_args(['--temperature', '2,5', '--num_steps', '7']))\n"
        "found = sweeps.finished_trials(planned, mlflow.create_experiment('new'))\n"
        "print(len(planned), sum(run is None for _, run, _ in found), 'tensorflow' in sys.modules, found[0][2])\n"
    )
    printed = subprocess.run([sys.executable, "-c", script, f"sqlite:///{tmp_path}/mlflow.db"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300, check=True).stdout
    planned, trained, tensorflow, reason = printed.split(maxsplit=3)
    assert [planned, trained, tensorflow] == ["15", "15", "False"]
    assert re.fullmatch(r"no finished run has its run key [0-9a-f]{16}\n", reason), reason


def test_trial_threads_and_gpu_memory_growth(monkeypatch):
    import tensorflow as tf

    from kdflow import training

    calls = []
    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads", lambda n: calls.append(("intra", n)))
    monkeypatch.setattr(tf.config.threading, "set_inter_op_parallelism_threads", lambda n: calls.append(("inter", n)))
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: ["gpu:0", "gpu:1"] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda gpu, on: calls.append((gpu, on)))
    training.configure_devices(2)
    assert calls == [("intra", 2), ("inter", 2), ("gpu:0", True), ("gpu:1", True)]


def test_sweep_plan_and_the_order_trials_start_in_without_a_barrier():
    planned = sweeps.plan(experiments.parse_args(["--temperature", "2,5", "--seed", "12,13", "--num_steps", "7"]))
    assert [trial.name.removesuffix("-num_steps=7") for trial in planned] == [
        "teacher-T2-seed12", "teacher-T2-seed13", "teacher-T5-seed12", "teacher-T5-seed13", "student-seed12",
        "student-seed13", "distill-T2-seed12", "distill-T2-seed13", "distill-T5-seed12", "distill-T5-seed13",
    ]
    assert all(trial.config.num_steps == 7 for trial in planned)

    # Teachers start first; a distillation starts the moment its own teacher is finished, ahead of
    # the students that fill slots meanwhile; one whose teacher failed for good never starts.
    queue = trials.TrialQueue(planned)
    started = {f"t{number}": queue.suggest(f"t{number}") for number in range(4)}
    assert [shown["trial"] for shown in started.values()] == [trial.name for trial in planned[:4]]
    short = "-num_steps=7"
    # What Ray Tune's tables show of a trial: its name, kind, temperature, seed and what differs.
    assert started["t0"] == {"trial": "teacher-T2-seed12" + short, "kind": "teacher", "temperature": "2", "seed": 12,
                             "num_steps": "7"}
    assert queue.suggest("t4") == {"trial": "student-seed12" + short, "kind": "student", "seed": 12, "num_steps": "7"}
    queue.on_trial_complete("t2", {"test_accuracy": 0.9, "run_id": "r"})  # teacher-T5-seed12 finished
    queue.on_trial_complete("t0", {"error": "ValueError: bad"})  # teacher-T2-seed12 failed for good
    assert queue.suggest("t5")["trial"] == "distill-T5-seed12" + short
    assert queue.suggest("t6")["trial"] == "student-seed13" + short
    assert queue.suggest("t7") is None  # The rest wait for teachers still training.
    queue.on_trial_complete("t1", None, error=True)  # teacher-T2-seed13: its worker died three times
    queue.on_trial_complete("t3", {"test_accuracy": 0.9, "run_id": "r"})
    assert queue.suggest("t8")["trial"] == "distill-T5-seed13" + short
    assert queue.suggest("t9") == queue.FINISHED
    assert sorted((result.trial.name, result.outcome, result.error) for result in queue.not_started) == [
        ("distill-T2-seed12" + short, trials.Outcome.FAILED, "its teacher's trial failed"),
        ("distill-T2-seed13" + short, trials.Outcome.FAILED, "its teacher's trial failed"),
    ]

    # Under a scheduler each kind's trials start in a fixed shuffle, teachers still first.
    shuffled = [trial.name for trial in (trials.TrialQueue(planned, shuffled=True).waiting)]
    assert shuffled == [trial.name for trial in trials.TrialQueue(planned, shuffled=True).waiting]
    assert sorted(shuffled[:4]) == [trial.name for trial in planned[:4]] and shuffled[:4] != [trial.name for trial in planned[:4]]
    assert [name.split("-")[0] for name in shuffled] == sorted((trial.kind for trial in planned), key=trials.START_ORDER.get)

    # A grid over loss weights: one distillation per weight, each named by it; teachers are shared.
    grid = experiments.parse_args(["--temperature", "2", "--seed", "12", "--kinds", "teacher,distill",
                                   "--loss", "weighted", "--hard_label_weight", "0.1,0.5"])
    assert [trial.name for trial in sweeps.plan(grid)] == [
        "teacher-T2-seed12", "distill-T2-seed12-loss=weighted-hard_label_weight=0.1",
        "distill-T2-seed12-loss=weighted-hard_label_weight=0.5",
    ]
    # A grid over any parameter: two student networks and two learning rates, four of each kind.
    grid = experiments.parse_args(["--temperature", "5", "--seed", "12", "--student_model", "softmax,mlp",
                                   "--learning_rate", "0.001,0.01", "--kinds", "student"])
    assert [trial.name for trial in sweeps.plan(grid)] == [
        "student-seed12", "student-seed12-learning_rate=0.01", "student-seed12-student_model=mlp",
        "student-seed12-student_model=mlp-learning_rate=0.01",
    ]
    # With one teacher temperature, the distillations at every T all learn from that teacher.
    teacher, *rest = sweeps.plan(experiments.parse_args(["--temperature", "2,5", "--seed", "12", "--teacher_temperature", "1",
                                                         "--recipe", "tuned"]))
    assert teacher.config.temperature == 1.0 and "recipe" not in teacher.config.params("teacher")
    distills = [trial.config for trial in rest if trial.kind == "distill"]
    assert [(c.temperature, c.teacher_temperature, c.recipe) for c in distills] == [(2.0, 1.0, "tuned"), (5.0, 1.0, "tuned")]
    assert [trial.name for trial in rest] == ["student-seed12-recipe=tuned", "distill-T2-seed12-recipe=tuned-teacher_temperature=1",
                                              "distill-T5-seed12-recipe=tuned-teacher_temperature=1"]
    assert {trial.teacher_key() for trial in [teacher] + rest if trial.kind != "student"} == {teacher.teacher_key()}
    # A teacher at one of the sweep's own temperatures is kdtf's teacher there, and each other T learns from it.
    planned = sweeps.plan(experiments.parse_args(["--temperature", "2,5", "--seed", "12", "--teacher_temperature", "5"]))
    assert [trial.config.teacher_config().temperature for trial in planned if trial.kind == "distill"] == [5.0, 5.0]
    for argv, named in ((["--temperature", "-2"], "temperature"), (["--kinds", "teacher,professor"], "kinds"),
                        (["--loss", "weighted", "--hard_label_weight", "0.5,1.5"], "hard_label_weight"),
                        (["--scheduler", "pbt"], "scheduler")):
        with pytest.raises(ValueError, match=named):
            experiments.parse_args(argv)


def sweep_runs_in_experiment():
    return mlflow.search_runs(filter_string=f"tags.`{tracking.KIND_TAG}` = 'sweep'",
                              order_by=["attributes.start_time ASC"], output_format="list")
