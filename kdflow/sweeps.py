"""Sweeps: temperature and seed trials fanned out over a Ray cluster with Ray Tune.

A sweep is one parent MLflow run. Teachers run first, one per temperature and seed (kdtf trains
its teacher at T); then the standalone students (one per seed) and the distillations, each of
which finds the teacher of its temperature and seed by the same lookup a single `distill` run
uses. Every trial is a child MLflow run logging exactly what a standalone run of its kind logs.
A trial that matches a FINISHED run of the experiment (same kind, parameters, code and data) is
not trained again; that run is listed in the sweep's trial table instead.
"""

import os
from pathlib import Path

import mlflow

from kdflow import config as configuration
from kdflow import data, jobs, tracking

TRIAL_TAG = "kdflow.trial_id"
NODE_TAG = "kdflow.ray_node_id"
WORKER_PID_TAG = "kdflow.worker_pid"
RESUMED_TAG = "kdflow.resumed_sweep"
MAX_FAILURES = 2  # Ray Tune retries a trial whose worker died this many times.


def trial_values(kind: str, temperature: float, seed: int, recipe: dict[str, str]) -> dict[str, str]:
    """The parameter strings of one trial: the shared recipe plus its temperature and seed."""
    values = dict(recipe, temperature=str(temperature), seed=str(seed), teacher="")
    return {name: values[name] for name in configuration.KIND_PARAMETERS[kind]}


def teacher_temperatures(sweep, recipe: dict[str, str]) -> list[float]:
    """The temperatures the sweep's distillations take their teachers from, in sweep order.

    kdtf trains a teacher per temperature; with teacher_temperature set, all learn from one.
    The rule is the distillation's own (``Config.teacher_config``), so sweep and run agree.
    """
    configs = [configuration.make_config(trial_values("distill", t, sweep.seeds[0], recipe)) for t in sweep.temperatures]
    return list(dict.fromkeys(config.teacher_config().temperature for config in configs))


def plan(sweep, recipe: dict[str, str]) -> list[list[tuple[str, dict[str, str]]]]:
    """The trials in phases: teachers first, since distillation needs them; then the rest."""
    teachers = [
        ("teacher", trial_values("teacher", temperature, seed, recipe))
        for temperature in teacher_temperatures(sweep, recipe)
        for seed in sweep.seeds
        if {"teacher", "distill"} & set(sweep.kinds)
    ]
    students = [("student", trial_values("student", 1.0, seed, recipe)) for seed in sweep.seeds if "student" in sweep.kinds]
    distills = [
        ("distill", trial_values("distill", temperature, seed, recipe))
        for temperature in sweep.temperatures
        for seed in sweep.seeds
        if "distill" in sweep.kinds
    ]
    return [phase for phase in (teachers, students + distills) if phase]


def absolute_tracking_uri() -> str:
    """The tracking URI with a relative SQLite path made absolute: trials run in other folders."""
    uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def check_cluster_can_track(tracking_uri: str, alive_nodes: int) -> None:
    """On more than one node every worker must reach the store: a local file will not do."""
    if alive_nodes > 1 and not tracking_uri.startswith(("http://", "https://")):
        raise ValueError(
            f"address: the Ray cluster has {alive_nodes} nodes, but the tracking URI {tracking_uri} is "
            "local to this machine; start an `mlflow server` every node can reach and set "
            "MLFLOW_TRACKING_URI=http://<host>:<port>"
        )


def _end_orphans(runs, status: str, reason: str) -> None:
    """End runs whose process died before it could end them, saying why."""
    client = mlflow.MlflowClient()
    for run in runs:
        client.set_tag(run.info.run_id, tracking.ERROR_TAG, reason)
        client.set_terminated(run.info.run_id, status)


def end_interrupted_sweep() -> str:
    """For resume=true: end the newest unfinished sweep with these parameters, return its run id.

    Its finished trials are reused like any finished run; the runs it left RUNNING died with it
    and end KILLED, so nothing stays RUNNING. The new sweep records which one it continues.
    """
    current = mlflow.get_run(mlflow.active_run().info.run_id)
    sweeps = mlflow.search_runs(
        experiment_ids=[current.info.experiment_id],
        filter_string=f"tags.`{tracking.KIND_TAG}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    interrupted = next(
        (
            run
            for run in sweeps
            if run.info.run_id != current.info.run_id
            and run.info.status != "FINISHED"
            and run.data.tags.get(tracking.PARAMS_TAG) == current.data.tags[tracking.PARAMS_TAG]
        ),
        None,
    )
    if interrupted is None:
        raise ValueError("resume: this experiment has no interrupted sweep with these parameters")
    left_running = mlflow.search_runs(
        experiment_ids=[current.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{interrupted.info.run_id}' and attributes.status = 'RUNNING'",
        output_format="list",
    )
    orphans = left_running + [interrupted] * (interrupted.info.status == "RUNNING")
    _end_orphans(orphans, "KILLED", f"interrupted; resumed by sweep {current.info.run_id}")
    mlflow.set_tag(RESUMED_TAG, interrupted.info.run_id)
    return interrupted.info.run_id


def run_trial(config: dict) -> None:
    """The Ray Tune trainable: one kdflow job as a child run of the sweep."""
    import ray
    from ray import tune

    from kdflow import training

    # The driver's MLFLOW_RUN_ID (set by `mlflow run`) would make every trial resume the parent.
    os.environ.pop("MLFLOW_RUN_ID", None)
    os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]
    training.configure_devices(max(1, int(config["cpus_per_trial"])))
    trial_id = tune.get_context().get_trial_id()
    # A retried trial's earlier attempt died with its worker and could not end its own run.
    stale = mlflow.search_runs(
        experiment_ids=[config["experiment_id"]],
        filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and attributes.status = 'RUNNING'",
        output_format="list",
    )
    _end_orphans(stale, "FAILED", "the worker died; Ray Tune retried the trial")
    trial = config["trial"]
    # Where the trial ran, so a sweep can be checked to use the whole cluster and a worker be found.
    tags = {TRIAL_TAG: trial_id, NODE_TAG: ray.get_runtime_context().get_node_id(), WORKER_PID_TAG: str(os.getpid())}
    run = jobs.run_job(trial["kind"], trial["values"], config["parent_run_id"], config["experiment_id"], tags)
    tune.report({"run_id": run.info.run_id, **run.data.metrics})


def run_sweep(sweep, recipe: dict[str, str]) -> list[dict]:
    """Run the sweep inside the active (parent) run; return one row per trial for its table."""
    import ray
    from ray import tune

    parent = mlflow.active_run()
    if sweep.resume:
        print(f"resuming sweep {end_interrupted_sweep()}; its finished trials are reused", flush=True)
    tracking_uri = absolute_tracking_uri()
    ray.init(address=sweep.address or None)
    check_cluster_can_track(tracking_uri, sum(node["Alive"] for node in ray.nodes()))
    trainable = tune.with_resources(run_trial, {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial})
    rows = []
    for number, phase in enumerate(plan(sweep, recipe), start=1):
        to_train = []
        for kind, values in phase:
            config = configuration.make_config(values)
            digest = data.DATASET_DIGESTS[config.dataset]  # What any source must match.
            reused = tracking.find_finished_run(kind, config, digest, parent.info.experiment_id)
            if reused is None:
                to_train.append({"kind": kind, "values": values})
            else:
                rows.append(_row(kind, values, "reused", reused.info.run_id, reused.data.metrics))
        if not to_train:
            continue
        shared = {
            "tracking_uri": tracking_uri,
            "experiment_id": parent.info.experiment_id,
            "parent_run_id": parent.info.run_id,
            "cpus_per_trial": sweep.cpus_per_trial,
        }
        tuner = tune.Tuner(
            trainable,
            param_space={**shared, "trial": tune.grid_search(to_train)},
            tune_config=tune.TuneConfig(metric="best_validation_accuracy", mode="max"),
            run_config=tune.RunConfig(
                name=f"sweep-{parent.info.run_id}-phase{number}",
                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            ),
        )
        for result in tuner.fit():
            trial = result.config["trial"]
            if result.error is None and "run_id" in result.metrics:
                rows.append(_row(trial["kind"], trial["values"], "trained", result.metrics["run_id"], result.metrics))
            else:
                reason = result.error or "the trial stopped before it reported"
                rows.append(_row(trial["kind"], trial["values"], f"failed: {reason}", "", {}))
    return rows


def _row(kind, values, outcome, run_id, metrics) -> dict:
    return {
        "trial": tracking.run_name(kind, configuration.make_config(values)),
        "kind": kind,
        "temperature": values.get("temperature", ""),
        "seed": values["seed"],
        "outcome": outcome,
        "run_id": run_id,
        "test_accuracy": metrics.get("test_accuracy", ""),
        "best_validation_accuracy": metrics.get("best_validation_accuracy", ""),
    }
