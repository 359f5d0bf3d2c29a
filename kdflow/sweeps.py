"""Sweeps: temperature, loss-weight and seed trials fanned out over a Ray cluster with Ray Tune.

A sweep is one parent MLflow run. It plans a teacher per temperature and seed (kdtf trains its
teacher at T), a standalone student per seed, and a distillation per temperature, loss weight
and seed, which finds the teacher of its temperature and seed by the same lookup a single
`distill` run uses. Every trial is a child MLflow run logging exactly what a standalone run of
its kind logs. A trial that matches a FINISHED run of the experiment (same kind, parameters, code
and data) is not trained again; that run is listed in the sweep's trial table instead. How the
rest run on Ray Tune, and in what order, is ``kdflow.trials``'.
"""

import dataclasses
import json
import math
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import ray

from kdflow import cards, liveness, runs, tracking, trials
from kdflow.config import DEFAULTS, KIND_PARAMETERS, KINDS, SEED_RANGE, Config, parse_options, to_text
from kdflow.data import DATASET_DIGESTS
from kdflow.trials import Outcome, Trial, TrialResult

RESUMED_TAG = "kdflow.resumed_sweep"
# Where and how the trials run, not what they train: a sweep resumed with other resources is the same sweep.
NOT_IDENTITY = ("address", "cpus_per_trial", "gpus_per_trial", "resume")
# The tracking server's credentials, which every trial needs and no record may show.
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# A sweep takes the recipe of the core kinds (not one temperature, seed, loss weight or teacher: it spans them).
RECIPE_PARAMETERS = tuple(
    name for name in KIND_PARAMETERS["distill"] if name not in ("temperature", "seed", "teacher", "hard_label_weight")
)


@dataclass(frozen=True)
class SweepConfig:
    temperatures: tuple[float, ...] = (2.0, 5.0)  # one teacher and one distillation per T (kdtf: 2, 5)
    hard_label_weights: tuple[float, ...] = ()  # one distillation per weight; empty: kdtf's loss (Config.hard_label_weight)
    seeds: tuple[int, ...] = (12, 13, 14)  # every trial is repeated per seed; the table shows the spread
    kinds: tuple[str, ...] = KINDS  # which kinds of trial to run: teacher, student, distill
    scheduler: str = ""  # "": every trial runs to the end; "asha": ASHA stops weak distillations early
    address: str = ""  # Ray cluster: empty starts a local one; "auto" or "host:port" joins one
    cpus_per_trial: float = 1.0  # CPUs Ray reserves per trial; TensorFlow uses as many threads
    gpus_per_trial: float = 0.0  # GPUs per trial; fractions share a card (memory growth is on)
    resume: bool = False  # continue the newest interrupted sweep with these parameters

    def __post_init__(self):
        if not self.temperatures or not all(math.isfinite(t) and t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be finite numbers > 0, got {self.temperatures}")
        if not all(0.0 <= weight <= 1.0 for weight in self.hard_label_weights):
            raise ValueError(f"hard_label_weights must be between 0 and 1, got {to_text(self.hard_label_weights)}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        unknown = set(self.kinds) - set(KINDS)
        if not self.kinds or unknown:
            raise ValueError(f"kinds must be some of {', '.join(KINDS)}, got {', '.join(self.kinds) or 'none'}")
        for name in ("temperatures", "hard_label_weights", "seeds", "kinds"):
            # A repeated value would run the same trial twice and count one result twice.
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat a value, got {to_text(values)}")
        if not all(seed in SEED_RANGE for seed in self.seeds):
            raise ValueError(f"seeds must be integers from 0 to 2**32 - 1, got {to_text(self.seeds)}")
        if self.scheduler not in trials.SCHEDULERS:
            raise ValueError(f"scheduler must be empty or asha, got {self.scheduler!r}")
        if not self.cpus_per_trial > 0:
            raise ValueError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if not self.gpus_per_trial >= 0:
            raise ValueError(f"gpus_per_trial must be >= 0, got {self.gpus_per_trial}")


SWEEP_DEFAULTS = SweepConfig()


def parse_args(argv: list[str]) -> tuple[SweepConfig, dict]:
    """The sweep's own options and the typed recipe options every trial shares."""
    recipe_defaults = {name: getattr(DEFAULTS, name) for name in RECIPE_PARAMETERS}
    values = parse_options("sweep", argv, vars(SWEEP_DEFAULTS) | recipe_defaults)
    sweep = SweepConfig(**{item.name: values.pop(item.name) for item in dataclasses.fields(SweepConfig)})
    if values["data_dir"]:  # Ray runs each trial in a folder of its own, where a relative path means nothing.
        values["data_dir"] = str(Path(values["data_dir"]).expanduser().resolve())
    Config(**values)  # Check the shared recipe now, before any cluster is started.
    return sweep, values


def trial_config(recipe: dict, temperature: float, seed: int, hard_label_weight: float | None = None) -> Config:
    """One trial's configuration: the sweep's recipe at one temperature, seed and loss weight."""
    return dataclasses.replace(DEFAULTS, **recipe, temperature=temperature, seed=seed, hard_label_weight=hard_label_weight)


def teacher_temperatures(sweep: SweepConfig, recipe: dict) -> list[float]:
    """The temperatures the sweep's distillations take their teachers from, in sweep order.

    kdtf trains a teacher per temperature; with teacher_temperature set, all learn from one.
    The rule is the distillation's own (``Config.teacher_config``), so sweep and run agree.
    """
    configs = [trial_config(recipe, t, sweep.seeds[0]) for t in sweep.temperatures]
    return list(dict.fromkeys(config.teacher_config().temperature for config in configs))


def plan(sweep: SweepConfig, recipe: dict) -> list[Trial]:
    """Every trial of the sweep: teachers, students and distillations (``trials.TrialQueue`` orders them)."""
    teachers = [
        Trial("teacher", trial_config(recipe, temperature, seed))
        for temperature in teacher_temperatures(sweep, recipe)
        for seed in sweep.seeds
        if {"teacher", "distill"} & set(sweep.kinds)
    ]
    students = [
        Trial("student", trial_config(recipe, DEFAULTS.temperature, seed)) for seed in sweep.seeds if "student" in sweep.kinds
    ]
    distills = [
        Trial("distill", trial_config(recipe, temperature, seed, weight))
        for temperature in sweep.temperatures
        for weight in sweep.hard_label_weights or (None,)
        for seed in sweep.seeds
        if "distill" in sweep.kinds
    ]
    return teachers + students + distills


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
    credentials = {name: os.environ[name] for name in CREDENTIALS if name in os.environ}
    try:
        # "local" starts a Ray of the sweep's own even when another cluster runs on this machine,
        # which Ray would otherwise join.
        ray.init(address=address or "local", runtime_env={"env_vars": credentials} if credentials else None)
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


def finished_trials(planned: list[Trial], experiment_id: str) -> tuple[list[Trial], list]:
    """The planned trials, teachers and students first, and beside each the finished run that
    trained it already, or None.

    A distillation's key holds its teacher's logits digest, so the teachers are looked up first;
    a distillation whose teacher is to be trained again is trained again too. Any source of the
    dataset must match its pinned digest, so it is known before loading. Each trial resolves
    precision=auto on its own node; the driver looks up what it would choose.
    """
    def key(trial: Trial, teacher_logits_digest: str = "") -> tuple[str, str]:
        config = trial.config.resolved()
        return trial.kind, tracking.run_key(trial.kind, config, DATASET_DIGESTS[config.dataset], teacher_logits_digest)

    first = [trial for trial in planned if trial.kind != "distill"]
    found = tracking.find_finished_runs([key(trial) for trial in first], experiment_id)
    teacher_digests = {
        trial.teacher_key(): run.data.tags[tracking.TEACHER_LOGITS_DIGEST_TAG]
        for trial, run in zip(first, found) if trial.kind == "teacher" and run is not None
    }
    distills = [trial for trial in planned if trial.kind == "distill"]
    with_teacher = [trial for trial in distills if trial.teacher_key() in teacher_digests]
    reused = tracking.find_finished_runs(
        [key(trial, teacher_digests[trial.teacher_key()]) for trial in with_teacher], experiment_id
    ) if with_teacher else []
    reused_by_trial = dict(zip(with_teacher, reused))
    return first + distills, found + [reused_by_trial.get(trial) for trial in distills]


def run_trials(sweep: SweepConfig, recipe: dict) -> list[TrialResult]:
    """Run the sweep's trials inside the active (parent) run; return each trial's outcome."""
    parent = mlflow.active_run().info
    if sweep.resume:
        print(f"resuming sweep {end_interrupted_sweep()}; its finished trials are reused", flush=True)
    tracking_uri = absolute_tracking_uri()
    nodes = connect(sweep.address)
    check_resources(sweep, nodes)
    check_cluster_can_track(tracking_uri, len(nodes))
    outcomes, to_train = [], []
    for trial, reused in zip(*finished_trials(plan(sweep, recipe), parent.experiment_id)):
        if reused is None:
            to_train.append(trial)
        else:
            outcomes.append(TrialResult(trial, Outcome.REUSED, reused.info.run_id, reused.data.metrics))
    if not to_train:
        return outcomes
    shared = {
        "tracking_uri": tracking_uri,
        "experiment_id": parent.experiment_id,
        "parent_run_id": parent.run_id,
        "cpus_per_trial": sweep.cpus_per_trial,
    }
    resources = {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial}
    trained = trials.tune_trials(to_train, shared, resources, slots(sweep, nodes), sweep.scheduler, f"sweep-{parent.run_id}")
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
    return outcomes + trained


def describe_sweep(sweep: SweepConfig, recipe: dict) -> None:
    """Name the sweep run and log its parameters (those ``mlflow run`` has not logged already)."""
    params = {name: to_text(value) for name, value in (vars(sweep) | recipe).items()}
    runs.log_params(params)
    for name in NOT_IDENTITY:  # A resumed sweep has the identity of the sweep it continues.
        del params[name]
    temperatures = ",".join(f"{t:g}" for t in sweep.temperatures)
    seeds = ",".join(map(str, sweep.seeds))
    teachers = teacher_temperatures(sweep, recipe)
    fixed_teacher = f"-teacherT{','.join(f'{t:g}' for t in teachers)}" if teachers != list(sweep.temperatures) else ""
    weights = f"-w{','.join(f'{w:g}' for w in sweep.hard_label_weights)}" if sweep.hard_label_weights else ""
    scheduler = f", stopped early by {sweep.scheduler.upper()} where weak" if sweep.scheduler else ""
    variant = runs.variant_suffix("sweep", recipe["recipe"], recipe["student_model"], recipe["teacher_initializer"])
    runs.name_run(
        f"sweep-T{temperatures}{fixed_teacher}{weights}-seeds{seeds}{variant}",
        f"Sweep of {', '.join(sweep.kinds)} trials at T={temperatures}, seeds {seeds}, recipe {recipe['recipe']}, "
        f"{recipe['student_model']} student, {recipe['teacher_initializer']}-initialised teacher, "
        f"on Ray Tune{scheduler}. Every trial is a child run; trials.csv says which were trained, reused, "
        "stopped or failed.",
    )
    mlflow.set_tags({tracking.PARAMS_TAG: json.dumps(params, sort_keys=True), tracking.RECIPE_TAG: recipe["recipe"]})


def run_sweep(sweep: SweepConfig, recipe: dict) -> list[TrialResult]:
    """The sweep job: its own tracked run, the trials, trials.csv and the results table.

    Raises ``runs.PartlyFailed``, after logging everything, when some trial failed for good.
    """
    with runs.tracked_run("sweep"):
        describe_sweep(sweep, recipe)
        outcomes = run_trials(sweep, recipe)
        table = pd.DataFrame([outcome.row() for outcome in outcomes])
        mlflow.log_text(table.to_csv(index=False), "trials.csv")
        print(table.drop(columns="error").to_string(index=False))
        markdown, tables = runs.log_results()
        print(markdown)
        # Each trial's card was written when it finished, before the seeds after it: now every
        # seed of its cell is in, the cards give the spread the table shows.
        for outcome in outcomes:
            if outcome.outcome in (Outcome.TRAINED, Outcome.REUSED) and outcome.trial.kind != "teacher":
                cards.publish(outcome.trial.kind, outcome.trial.config.resolved(), tables, outcome.run_id)
        failed = [outcome.trial.name for outcome in outcomes if outcome.outcome is Outcome.FAILED]
        if failed:
            raise runs.PartlyFailed(
                f"{len(failed)} of {len(outcomes)} trials failed: {', '.join(sorted(failed))}; each failed run holds its error"
            )
    return outcomes
