"""Sweeps: an experiment's grid of trials fanned out over a Ray cluster with Ray Tune.

A sweep runs one experiment file (``kdflow.experiments``) as one parent MLflow run. For each point
of its grid it plans a distillation, the teacher that distillation learns from (kdtf trains its
teacher at T) and the student alone, as its ``kinds`` ask; a distillation finds its teacher by the
same lookup a single ``distill`` run uses. Every trial is a child MLflow run logging exactly what
a standalone run of its kind logs. A trial that matches a FINISHED run of the experiment (same run
key: kind, parameters, code and data) is not trained again; ``trials.csv`` lists that run and
says why, as it says why each other trial trained. At the end the expected results are checked
against this sweep's table (``check.md``). How the trials run on Ray Tune, and in what order, is
``kdflow.trials``'.
"""

import contextlib
import dataclasses
import json
import math
import os
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import mlflow
import pandas as pd
import ray

from kdflow import cards, checks, liveness, precision, quiet, registry, results, runs, tracking, trials, variants
from kdflow.config import KINDS, to_text
from kdflow.experiments import Experiment, SweepConfig
from kdflow.trials import Outcome, Trial, TrialResult

RESUMED_TAG = "kdflow.resumed_sweep"
CHECK_TAG = "kdflow.check"
# The tracking server's credentials, which every trial needs and no record may show.
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def plan(experiment: Experiment) -> list[Trial]:
    """Every trial of the sweep: for each point of the grid, a distillation, the teacher it learns
    from (unless it names one) and the student alone, as ``kinds`` asks; a trial that several
    points share (the student of every temperature, say) is planned once."""
    kinds = experiment.sweep.kinds
    planned = {}
    for config in experiment.configs():
        wanted = [Trial("teacher", config.teacher_config())] if {"teacher", "distill"} & set(kinds) and not config.teacher else []
        wanted += [Trial(kind, config) for kind in ("student", "distill") if kind in kinds]
        for trial in wanted:
            planned.setdefault((trial.kind, json.dumps(trial.config.params(trial.kind), sort_keys=True)), trial)
    return sorted(planned.values(), key=lambda trial: KINDS.index(trial.kind))


def absolute_tracking_uri() -> str:
    """The tracking URI with a relative SQLite path made absolute: trials run in other folders.

    It travels in Ray Tune's parameter space, which Tune writes to its results folder, so it may
    not hold credentials: those come from MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.
    """
    uri = mlflow.get_tracking_uri()
    if urllib.parse.urlsplit(uri).password is not None:
        raise ValueError(
            "MLFLOW_TRACKING_URI holds a password; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
            "instead, so that it is never written into Ray Tune's results"
        )
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def connect(address: str) -> list[dict]:
    """Join the Ray cluster at ``address`` (empty: start a local one); return its live nodes.

    The tracking server's credentials reach the trials in the job's environment (Ray's
    runtime_env), never in Tune's parameter space, which Tune writes to disk.
    """
    if address and address != "auto" and not address.startswith("ray://"):
        # Ray retries an unreachable cluster for minutes; a plain connection says so at once.
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except (OSError, ValueError) as error:
            raise ValueError(f"address: no Ray cluster answers at {address} ({error})") from None
    # The modules that register variants too, so that every worker knows them.
    credentials = {name: os.environ[name] for name in CREDENTIALS + (variants.PLUGINS_VARIABLE,) if name in os.environ}
    # A Ray of the sweep's own lives as long as the sweep: without a dashboard, as with Ray installed
    # by kdflow alone (ray[tune]), it starts about a second sooner and leaves the cores to the trials.
    own_ray = {} if address else {"include_dashboard": False}
    try:
        # "local" starts a Ray of the sweep's own even when another cluster runs on this machine,
        # which Ray would otherwise join.
        ray.init(address=address or "local", runtime_env={"env_vars": credentials} if credentials else None, **own_ray)
    except ConnectionError as error:
        raise ValueError(f"address: cannot join a Ray cluster at {address} ({error})") from None
    return [node for node in ray.nodes() if node["Alive"]]


def check_resources(sweep: SweepConfig, nodes: list[dict]) -> None:
    """A trial asking for more than any node has would wait for ever: refuse it instead."""
    for name, resource in (("cpus_per_trial", "CPU"), ("gpus_per_trial", "GPU")):
        wanted = getattr(sweep, name)
        largest = max(node["Resources"].get(resource, 0.0) for node in nodes)
        if wanted > largest:
            raise ValueError(f"{name}: {wanted:g} is more than any node of the Ray cluster has ({largest:g} {resource})")


def slots(sweep: SweepConfig, nodes: list[dict]) -> int:
    """How many trials the cluster's nodes fit at once."""
    def fit(node):
        by_cpu = math.floor(node["Resources"].get("CPU", 0.0) / sweep.cpus_per_trial + 1e-9)
        by_gpu = math.floor(node["Resources"].get("GPU", 0.0) / sweep.gpus_per_trial + 1e-9) if sweep.gpus_per_trial else by_cpu
        return min(by_cpu, by_gpu)

    return sum(fit(node) for node in nodes)


def check_cluster_can_track(tracking_uri: str, alive_nodes: int) -> None:
    """On more than one node every worker must reach the store: a local file will not do."""
    if alive_nodes > 1 and not tracking_uri.startswith(("http://", "https://")):
        raise ValueError(
            f"address: the Ray cluster has {alive_nodes} nodes, but the tracking URI {tracking_uri} is "
            "local to this machine; start an `mlflow server` every node can reach and set "
            "MLFLOW_TRACKING_URI=http://<host>:<port>"
        )


def end_interrupted_sweep() -> str:
    """For resume=true: end the unfinished sweeps with these parameters; return the one continued.

    A sweep still RUNNING must be gone (``liveness``: its driver's process ended, or stopped
    beating): resuming a live sweep would train its trials twice. The runs the dead sweeps left
    RUNNING died with them and end KILLED, so nothing stays RUNNING; their finished trials are
    reused like any finished run. The new sweep records which one it continues: the newest that
    was still RUNNING, else the newest.
    """
    current = mlflow.get_run(mlflow.active_run().info.run_id)
    unfinished = [
        run
        for run in mlflow.search_runs(
            experiment_ids=[current.info.experiment_id],
            filter_string=f"tags.`{tracking.KIND_TAG}` = 'sweep' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            output_format="list",
        )
        if run.info.run_id != current.info.run_id
        and run.data.tags.get(tracking.PARAMS_TAG) == current.data.tags[tracking.PARAMS_TAG]
    ]
    if not unfinished:
        raise ValueError("resume: this experiment has no interrupted sweep with these parameters")
    running = [run for run in unfinished if run.info.status == "RUNNING"]
    now, machine = time.time(), liveness.this_machine()
    for run in running:
        if liveness.why_gone(run.data.tags, run.info.start_time, now, machine) is None:
            raise ValueError(
                f"resume: sweep {run.info.run_id} is still running; stop it first (a driver on another machine "
                f"counts as stopped {liveness.DEAD_AFTER_SECONDS} s after its last heartbeat)"
            )
    left_running = [
        run
        for run in mlflow.search_runs(
            experiment_ids=[current.info.experiment_id],
            filter_string="attributes.status = 'RUNNING'",
            output_format="list",
        )
        if run.data.tags.get("mlflow.parentRunId") in {sweep.info.run_id for sweep in unfinished}
    ]
    liveness.end_runs(left_running + running, "KILLED", f"interrupted; resumed by sweep {current.info.run_id}")
    continued = (running or unfinished)[0].info.run_id
    mlflow.set_tag(RESUMED_TAG, continued)
    return continued


def finished_trials(planned: list[Trial], experiment_id: str) -> list[tuple[Trial, object, str]]:
    """Each planned trial, the finished run that trained it already (or None), and why.

    A distillation's key holds its teacher's logits digest, so the teachers are looked up first;
    a distillation whose teacher is to be trained again is trained again too. Any source of the
    dataset must match its pinned digest, so it is known before loading. Each trial resolves
    precision=auto on its own node; the driver looks up what it would choose.
    """
    finished = tracking.finished_runs_by_key(experiment_id)  # One search for every trial.

    def lookup(trial: Trial, teacher_logits_digest: str = "") -> tuple[Trial, object, str]:
        config = trial.config.resolved()
        key = tracking.run_key(trial.kind, config, variants.DATASETS[config.dataset].digest, teacher_logits_digest)
        run = tracking.reusable(trial.kind, finished.get(key, []))
        if run is None:
            return trial, None, f"no finished run has its run key {key}"
        return trial, run, f"finished run {run.info.run_id} ({run.info.run_name}) has its run key {key}"

    found = [lookup(trial) for trial in planned if trial.kind != "distill"]
    teacher_digests = {
        trial.teacher_key(): run.data.tags[tracking.TEACHER_LOGITS_DIGEST_TAG]
        for trial, run, _ in found if trial.kind == "teacher" and run is not None
    }
    for trial in planned:
        if trial.kind != "distill":
            continue
        if trial.config.teacher:
            # A named teacher's run recorded its logits' digest; the distillation itself checks it is a teacher run.
            teacher_run_id = registry.resolve(trial.config.teacher, "teacher").run_id
            digest = mlflow.get_run(teacher_run_id).data.tags.get(tracking.TEACHER_LOGITS_DIGEST_TAG, "") if teacher_run_id else ""
            found.append(lookup(trial, digest))
        elif trial.teacher_key() in teacher_digests:
            found.append(lookup(trial, teacher_digests[trial.teacher_key()]))
        else:
            found.append((trial, None, "its teacher is trained in this sweep, so no finished run can have its teacher's logits"))
    return found


def run_trials(experiment: Experiment, sweep_end: contextlib.ExitStack) -> list[TrialResult]:
    """Run the sweep's trials inside the active (parent) run; return each trial's outcome.
    ``sweep_end`` is left before the parent run ends: Ray stops while the sweep's end is written."""
    sweep = experiment.sweep
    parent = mlflow.active_run().info
    if precision.sees_gpu_drivers():
        # "auto" precision asks TensorFlow about the GPUs (in run keys, names and cards): its
        # start-up lines held back. A machine without GPU drivers has none to ask about.
        quiet.import_tensorflow()
    if sweep.resume:
        print(f"resuming sweep {end_interrupted_sweep()}; its finished trials are reused", flush=True)
    tracking_uri = absolute_tracking_uri()
    outcomes, to_train, reasons = [], [], {}
    for trial, reused, reason in finished_trials(plan(experiment), parent.experiment_id):
        reasons[trial] = reason
        if reused is None:
            to_train.append(trial)
        else:
            outcomes.append(TrialResult(trial, Outcome.REUSED, reused.info.run_id, reused.data.metrics, reason=reason))
    if not to_train:
        print("every trial is reused: no Ray cluster is needed", flush=True)
        return outcomes
    nodes = connect(sweep.address)
    check_resources(sweep, nodes)
    check_cluster_can_track(tracking_uri, len(nodes))
    shared = {
        "tracking_uri": tracking_uri,
        "experiment_id": parent.experiment_id,
        "parent_run_id": parent.run_id,
        "cpus_per_trial": sweep.cpus_per_trial,
    }
    resources = {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial}
    try:
        trained = trials.tune_trials(to_train, shared, resources, slots(sweep, nodes), sweep.scheduler, f"sweep-{parent.run_id}")
    finally:
        # Done with Ray. A Ray of the sweep's own stops now, freeing its workers' memory, and
        # without the half-second pause of Ray's own exit hook. Stopping is mostly waiting for its
        # processes to exit (1.3 s), so it runs in a thread of its own while the sweep's end is
        # written; the sweep's run ends once it is done.
        stopping = threading.Thread(target=ray.shutdown, name="kdflow-ray-shutdown")
        stopping.start()
        sweep_end.callback(stopping.join)
    # Runs still RUNNING now were left so by a worker that died on its last attempt, or (stopped
    # early) by one that Ray Tune ended before the trial reached its next evaluation.
    stopped = {outcome.run_id for outcome in trained if outcome.outcome is Outcome.STOPPED}
    left_running = mlflow.search_runs(
        experiment_ids=[parent.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}' and attributes.status = 'RUNNING'",
        output_format="list",
    )
    liveness.end_runs([run for run in left_running if run.info.run_id in stopped], "KILLED", trials.STOPPED_EARLY)
    liveness.end_runs(
        [run for run in left_running if run.info.run_id not in stopped], "FAILED",
        "the worker died and Ray Tune gave up on the trial",
    )
    return outcomes + [dataclasses.replace(outcome, reason=reasons[outcome.trial]) for outcome in trained]


def describe_sweep(experiment: Experiment) -> None:
    """Name the sweep run after its experiment, log its parameters (those ``mlflow run`` has not
    logged already) and the resolved experiment as ``experiment.yaml``, which runs it again."""
    # Under `mlflow run` every parameter of the entry point is logged already, empty where the file
    # gives it; what the file and the overrides made of them is logged beside, as params.* and grid.*.
    shared = {f"params.{name}": to_text(value) for name, value in (experiment.params | vars(experiment.sweep)).items()}
    runs.log_params(shared | {f"grid.{name}": to_text(values) for name, values in experiment.grid.items()})
    runs.name_run(
        f"sweep-{experiment.name}",
        f"{experiment.description.strip()}\n\nEvery trial is a child run; trials.csv says which were trained, reused "
        "(and why), stopped or failed; experiment.yaml runs this sweep again; check.md compares its expected results.",
    )
    mlflow.set_tag(tracking.PARAMS_TAG, json.dumps(experiment.identity(), sort_keys=True))
    mlflow.log_text(experiment.to_yaml(), "experiment.yaml")


def _tabulated(outcomes: list[TrialResult]) -> list[str]:
    """The run ids of the trials that count in the sweep's tables: those trained or reused."""
    return [outcome.run_id for outcome in outcomes if outcome.outcome in (Outcome.TRAINED, Outcome.REUSED)]


def rewrite_cards(outcomes: list[TrialResult], tables: list[results.Table], trial_runs: list) -> None:
    """Write each trained or reused student's card again. Each was written when its trial ended,
    before the seeds after it: now every seed of its cell is in, the card gives the spread the
    table shows."""
    cards.publish_again([(outcome.trial.kind, outcome.trial.config.resolved(), outcome.run_id) for outcome in outcomes
                         if outcome.outcome in (Outcome.TRAINED, Outcome.REUSED) and outcome.trial.kind != "teacher"],
                        tables, trial_runs)


def check_expected(experiment: Experiment, trial_runs: list) -> checks.Check:
    """Compare the expected cells with the table of this sweep's own trials (other runs of the
    experiment, such as another seed run by hand, would move a cell); record and print the result."""
    version = tracking.code_version()
    tables = results.build_tables([record for record in results.records_of(trial_runs) if record.code_version == version])
    check = checks.check(experiment.expected, tables)
    mlflow.log_text(check.markdown(), "check.md")
    mlflow.set_tag(CHECK_TAG, check.tag())
    print(check.line(), flush=True)
    return check


def run_sweep(experiment: Experiment) -> list[TrialResult]:
    """The sweep job: its own tracked run, the trials, trials.csv, the results table and the check.

    Raises ``runs.PartlyFailed``, after logging everything, when some trial failed for good, or
    with ``check=strict`` when an expected cell is outside its tolerance or missing.
    """
    with runs.tracked_run("sweep"), contextlib.ExitStack() as sweep_end:
        describe_sweep(experiment)
        outcomes = run_trials(experiment, sweep_end)
        table = pd.DataFrame([outcome.row() for outcome in outcomes])
        mlflow.log_text(table.to_csv(index=False), "trials.csv")
        print(table.drop(columns=["error", "reason"]).to_string(index=False))
        # The trials' runs, read once for the table, the cards and the check.
        trial_runs = results.search_ids(mlflow.MlflowClient(), mlflow.active_run().info.experiment_id, _tabulated(outcomes))
        markdown, tables = runs.log_results(trial_runs)
        print(markdown)
        rewrite_cards(outcomes, tables, trial_runs)
        check = check_expected(experiment, trial_runs)
        failed = [outcome.trial.name for outcome in outcomes if outcome.outcome is Outcome.FAILED]
        if failed:
            raise runs.PartlyFailed(
                f"{len(failed)} of {len(outcomes)} trials failed: {', '.join(sorted(failed))}; each failed run holds its error"
            )
        if check.fails(experiment.sweep.check):
            raise runs.PartlyFailed(f"{check.line()} (check=strict); check.md on the sweep run says which")
    return outcomes
