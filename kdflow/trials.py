"""A sweep's trials on Ray Tune: which trial starts when, the trainable that runs one, and what came of it.

No phase barrier: ``TrialQueue``, Ray Tune's searcher, hands out each trial as soon as it can
start, a distillation the moment its own teacher is finished. Warm workers: Ray Tune keeps a
finished trial's worker for the next trial (``reuse_actors``), so TensorFlow, Ray and MLflow are
imported once per worker, not once per trial, stopped trials' workers included. Live reporting: a
trial reports its step, losses and validation accuracy to Ray Tune at every evaluation, so Tune's
progress table moves and a scheduler such as ASHA can stop weak distillations early
(``scheduler=asha``); it does so from a thread of its own (``Reporter``), so training never waits
for the driver.

Ray Tune's configuration of a trial is what its progress table shows: the trial's name (its
MLflow run's), kind, temperature, seed and the parameters that differ from kdtf's. The trainable
gets the typed ``Trial(kind, Config)`` by that name, and the sweep's shared settings, through
``tune.with_parameters``.
"""

import enum
import functools
import os
import queue
import random
import threading
from dataclasses import dataclass, field

import mlflow
import ray
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from kdflow import liveness, quiet, registry, runs, tracking
from kdflow.config import Config

TRIAL_TAG = "kdflow.trial_id"
NODE_TAG = "kdflow.ray_node_id"
WORKER_PID_TAG = "kdflow.worker_pid"
MAX_FAILURES = 2  # Ray Tune retries a trial whose worker died (or whose store failed) this many times.
# A warm worker's next trial skips importing TensorFlow (about 10 s); the benchmark turns it off to compare.
REUSE_WORKERS = True
STOP_TIMEOUT_S = 120  # how long a warm worker's stopped trial may take to end its run (MLflow retries included)
STOPPED_EARLY = "the sweep's scheduler stopped the trial early"  # why a stopped trial's run is KILLED
SCHEDULERS = ("", "asha")  # "": every trial runs to the end; "asha": ASHA stops weak distillations early
START_ORDER = {"teacher": 0, "distill": 1, "student": 2}  # longest and most waited for first
SHUFFLE_SEED = 0  # the order a scheduler's trials start in is fixed, so a sweep repeats


@dataclass(frozen=True)
class Trial:
    """One run the sweep plans: its kind and its whole configuration."""
    kind: str
    config: Config

    @property
    def name(self) -> str:
        return runs.run_name(self.kind, self.config)

    def shown(self) -> dict:
        """What Ray Tune's configuration holds and its tables show; the trainable finds the trial by its name."""
        shown = {"trial": self.name, "kind": self.kind}
        if self.kind != "student":
            shown["temperature"] = f"{self.config.temperature:g}"
        return {**shown, "seed": self.config.seed, **runs.named_differences(self.kind, self.config)}

    def teacher_key(self) -> str:
        """What identifies the teacher this trial is (a teacher) or learns from (a distillation)."""
        config = self.config if self.kind == "teacher" else self.config.teacher_config()
        return repr(sorted(config.params("teacher").items()))


class Outcome(enum.Enum):
    TRAINED = "trained"
    REUSED = "reused"  # A FINISHED run of the experiment trained exactly this already.
    STOPPED = "stopped"  # The scheduler stopped it early: its run is KILLED, never reused or counted.
    FAILED = "failed"  # Failed for good: Ray Tune's retries are spent; the failed runs hold the error.


@dataclass(frozen=True)
class TrialResult:
    trial: Trial
    outcome: Outcome
    run_id: str = ""
    metrics: dict = field(default_factory=dict)
    error: str = ""
    reason: str = ""  # why it was reused or trained: the finished run that has its run key, or that none has


    def row(self) -> dict:
        """The trial's line in the sweep's trials.csv."""
        return {
            "trial": self.trial.name, "kind": self.trial.kind, "outcome": self.outcome.value, "run_id": self.run_id,
            "test_accuracy": self.metrics.get("test_accuracy", ""),
            "best_validation_accuracy": self.metrics.get("best_validation_accuracy", ""), "reason": self.reason,
            "error": self.error,
        }


class TrialQueue(Searcher):
    """Ray Tune's searcher over the planned trials: each is handed out as soon as it can start.

    A distillation waits only for its own teacher's trial; if that trial failed for good, the
    distillation is not started (it would train a teacher of its own inside its run). Teachers
    start first, being the longest and waited for; students fill the slots nothing else can use.

    ``shuffled`` (under ASHA) starts each kind's trials in a seeded shuffle rather than in grid
    order. Asynchronous ASHA judges a trial at a rung only against those that reached it before,
    and cannot stop the first ones: in grid order those are the neighbours of one corner of the
    grid, which tell the weak from the strong late. Spread over the grid, they do so early.
    """

    def __init__(self, trials: list[Trial], shuffled: bool = False):
        super().__init__()
        if shuffled:
            trials = random.Random(SHUFFLE_SEED).sample(trials, len(trials))
        self.waiting = sorted(trials, key=lambda trial: START_ORDER[trial.kind])
        self.pending_teachers = {trial.teacher_key() for trial in trials if trial.kind == "teacher"}
        self.failed_teachers: set[str] = set()
        self.started: dict[str, Trial] = {}
        self.not_started: list[TrialResult] = []

    def suggest(self, trial_id: str):
        for trial in list(self.waiting):
            if trial.kind == "distill" and trial.teacher_key() in self.failed_teachers:
                self.waiting.remove(trial)
                self.not_started.append(TrialResult(trial, Outcome.FAILED, error="its teacher's trial failed"))
            elif trial.kind != "distill" or trial.teacher_key() not in self.pending_teachers:
                self.waiting.remove(trial)
                self.started[trial_id] = trial
                return trial.shown()
        return None if self.waiting else self.FINISHED

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: a resumed sweep starts a new queue and reuses its finished runs instead."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        trial = self.started[trial_id]
        if trial.kind == "teacher":
            self.pending_teachers.discard(trial.teacher_key())
            if error or "test_accuracy" not in (result or {}):
                self.failed_teachers.add(trial.teacher_key())


class DistillationASHA(AsyncHyperBandScheduler):
    """ASHA over the distillations alone: their validation accuracies compare, a teacher's does not,
    and a teacher must finish, since distillations learn from it."""

    def __init__(self, config: Config):
        # One rung, a third of the way, keeping the best quarter there. Earlier, kdtf's students
        # (started at N(0, 1)) rank by how fast they start, not by where they end: at a ninth of
        # 5000 steps the T = 10 and T = 20 distillations led and the best one (T = 5) was sixth,
        # and a rung there stopped it. Only one rung fits below the last step, so no trial is
        # judged when its training is already done.
        super().__init__(
            time_attr="step", metric="validation_accuracy", mode="max", max_t=config.num_steps,
            grace_period=config.num_steps // 3 + 1, reduction_factor=4, stop_last_trials=False,
        )

    def on_trial_add(self, tune_controller, trial):
        if trial.config["kind"] == "distill":
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        if trial.config["kind"] != "distill":
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if trial.config["kind"] == "distill":
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        if trial.config["kind"] == "distill":
            super().on_trial_remove(tune_controller, trial)


@functools.cache
def _configure_devices(cpu_threads: int) -> None:
    """Once per worker: TensorFlow's thread pools cannot be resized once it has run an op."""
    from kdflow import training

    training.configure_devices(cpu_threads)


class Reporter:
    """Logs each evaluation of a trial to MLflow, and reports it to Ray Tune from a thread of its own.

    Ray Tune's function API holds the thread that calls ``tune.report`` until the driver has taken
    the result and asked for the next one: called from the training loop, it made the loop wait
    for the driver at every evaluation. Here the loop only queues the report. A stop (ASHA's)
    reaches the reporting thread as Ray Tune's SystemExit; the loop meets it as ``runs.Stopped`` at
    its next evaluation. The last evaluation is reported from the loop, once every earlier report
    has been taken, so that a stopped trial never logs it, nor anything a complete run logs. (MLflow's
    active run belongs to the thread that started it, so the metrics are still logged by the loop.)
    """

    def __init__(self, run_id: str, last_step: int):
        self.run_id, self.last_step = run_id, last_step
        self.pending: queue.Queue = queue.Queue()
        self.stopped_at: int | None = None  # the step whose report Ray Tune answered with a stop
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._hand_over, name="kdflow-reporter", daemon=True)
        self.thread.start()

    def __call__(self, evaluation) -> None:
        last = evaluation.step >= self.last_step
        if last:
            self.close()  # Every earlier report taken: a stop at any of them is raised here.
        self._raise_what_happened()
        tracking.log_evaluation(evaluation)
        if last:
            self._report(evaluation)
            self._raise_what_happened()
        else:
            self.pending.put(evaluation)

    def close(self) -> None:
        """Wait until every queued evaluation has been reported (again: at once)."""
        self.pending.put(None)
        self.thread.join()

    def _raise_what_happened(self) -> None:
        if self.error is not None:
            raise self.error
        if self.stopped_at is not None:
            raise runs.Stopped(f"{STOPPED_EARLY}, at step {self.stopped_at}")

    def _hand_over(self) -> None:
        while (evaluation := self.pending.get()) is not None and self._report(evaluation):
            pass

    def _report(self, evaluation) -> bool:
        """Report one evaluation to Ray Tune; False if it answered with a stop, or the report failed."""
        metrics = {name: getattr(evaluation, name) for name in ("step", "train_loss", "validation_loss", "validation_accuracy")}
        try:
            tune.report({"run_id": self.run_id, **metrics})
        except SystemExit:  # Ray Tune's way of stopping a trial at a report.
            self.stopped_at = evaluation.step
            return False
        except Exception as error:  # Raised in the loop, whose run then fails with it.
            self.error = error
            return False
        return True


def run_trial(shown: dict, trials: dict[str, Trial], shared: dict) -> None:
    """The Ray Tune trainable: one kdflow job as a child run of the sweep. ``shown`` is the trial's
    configuration (``Trial.shown``), ``trials`` every trial by name, ``shared`` the sweep's settings."""
    quiet.silence_libraries()
    quiet.import_tensorflow()
    import keras

    # A warm worker is handed its next trial only once the stopped one's thread has ended its run,
    # which takes a few tracking calls; Ray Tune waits 2 s by default, then fails the next trial.
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = str(STOP_TIMEOUT_S)
    # The driver's MLFLOW_RUN_ID (set by `mlflow run`) would make every trial resume the parent.
    os.environ.pop("MLFLOW_RUN_ID", None)
    os.environ["MLFLOW_TRACKING_URI"] = shared["tracking_uri"]
    _configure_devices(max(1, int(shared["cpus_per_trial"])))
    # A warm worker holds the previous trial's models; a fresh Keras state also names layers as a fresh process would.
    # Without a full garbage collection: with eight trials on two cores it was 1.4 s of the 2.1 s between
    # one trial and the next (bench_scale), and Python's own collector frees the old models' cycles anyway.
    keras.backend.clear_session(free_memory=False)
    trial_id = tune.get_context().get_trial_id()
    trial = trials[shown["trial"]]
    earlier = mlflow.search_runs(  # This trial's earlier attempts, in this sweep.
        experiment_ids=[shared["experiment_id"]],
        filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{shared['parent_run_id']}'",
        output_format="list",
    )
    # A retried trial's earlier attempt died with its worker and could not end its own run.
    stale = [run for run in earlier if run.info.status == "RUNNING"]
    liveness.end_runs(stale, "FAILED", "the worker died; Ray Tune retried the trial")
    done = [run for run in earlier if run.info.status == "FINISHED" and tracking.RUN_KEY_TAG in run.data.tags]
    if done:
        # Its worker died after the run was complete, before Ray Tune heard of it: report that run
        # rather than train the trial a second time.
        _report_finished(done[0].info.run_id, trial)
        return
    # Where the trial ran, so a sweep can be checked to use the whole cluster and a worker be found.
    tags = {TRIAL_TAG: trial_id, NODE_TAG: ray.get_runtime_context().get_node_id(), WORKER_PID_TAG: str(os.getpid())}
    try:
        with runs.tracked_run(trial.kind, shared["parent_run_id"], shared["experiment_id"], tags) as run:
            reporter = Reporter(run.info.run_id, trial.config.num_steps)
            try:
                runs.run_job(trial.kind, trial.config, reporter)
            finally:
                reporter.close()  # A run that failed before its last evaluation leaves no report behind.
    except runs.Stopped:
        # Its run has ended KILLED. The thread must end by Ray Tune's SystemExit, not by returning:
        # Ray Tune (2.60) follows a trainable's return with a last report, which would block the
        # thread for good and fail the next trial given this worker.
        raise SystemExit(0) from None
    except ValueError as error:
        # Bad input fails again on every attempt: report it, and keep Ray Tune's retries for the
        # rest (a worker that died, a tracking server that was down for longer than MLflow retries).
        tune.report({"error": f"{type(error).__name__}: {error}"})
        return
    _report_finished(run.info.run_id, trial)


def _report_finished(run_id: str, trial: Trial) -> None:
    """Promote the trial's complete run, then report its final metrics to Ray Tune."""
    registry.promote(run_id)  # Only now that the run has ended FINISHED.
    final = mlflow.get_run(run_id).data.metrics
    tune.report({"run_id": run_id, "step": trial.config.num_steps, **final})


def outcome_of(result, trial: Trial) -> TrialResult:
    """What Ray Tune's result for a trial says came of it."""
    metrics = result.metrics or {}
    if result.error is None and "test_accuracy" in metrics:
        return TrialResult(trial, Outcome.TRAINED, metrics["run_id"], metrics)
    if result.error is None and "error" not in metrics and "run_id" in metrics:
        return TrialResult(trial, Outcome.STOPPED, metrics["run_id"], metrics)
    error = metrics.get("error") or str(result.error or "the trial stopped before it reported")
    return TrialResult(trial, Outcome.FAILED, error=error)


def _trial_folder(tune_trial) -> str:
    """A trial's folder in ~/ray_results: its id, which is unique, then its name, cut short and without a "/"."""
    return f"{tune_trial.trial_id}_{tune_trial.config['trial']}"[:120].replace("/", "_")


def tune_trials(trials: list[Trial], shared: dict, resources: dict, slots: int, scheduler: str, name: str
                ) -> list[TrialResult]:
    """Run the trials on Ray Tune (already connected; ``slots`` trials fit at once) and return each one's outcome."""
    trial_queue, by_name = TrialQueue(trials, shuffled=bool(scheduler)), {trial.name: trial for trial in trials}
    assert len(by_name) == len(trials), "a sweep's trials have names of their own (experiments refuses the rest)"
    if scheduler == "asha":
        # A failed trial reports its error, not a validation accuracy: ASHA must not take that for a bug.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, trials=by_name, shared=shared), resources),
        tune_config=tune.TuneConfig(
            trial_name_creator=lambda tune_trial: tune_trial.config["trial"],  # as its MLflow run is named
            trial_dirname_creator=_trial_folder,
            # The limiter lets Ray Tune ask for a worker for every slot at once (alone, a custom
            # searcher gets one pending trial at a time, and the slots fill one worker start-up
            # after another).
            search_alg=ConcurrencyLimiter(trial_queue, max_concurrent=max(1, slots)), num_samples=len(trials),
            reuse_actors=REUSE_WORKERS,
            scheduler=DistillationASHA(trials[0].config) if scheduler == "asha" else None,
        ),
        run_config=tune.RunConfig(name=name, failure_config=tune.FailureConfig(max_failures=MAX_FAILURES)),
    )
    grid = tuner.fit()
    return [outcome_of(result, by_name[result.config["trial"]]) for result in grid] + trial_queue.not_started
