"""One job inside one tracked MLflow run: how the run starts and ends, its name, its description,
its parameters, and the results table it logs at the end.

This is what people read in the MLflow UI, so it may change without making finished runs
unusable for reuse: none of it is part of ``tracking.code_version``.
"""

import contextlib
import importlib
import json
import signal
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from kdflow import cards, liveness, quiet, results, tracking, variants
from kdflow.config import KIND_PARAMETERS, NOT_NAMED, Config
from kdflow.jobs import JOBS

# The run's description in the MLflow UI (Markdown), and the experiment kind that opens the UI on
# its "Model training" view rather than the GenAI one.
DESCRIPTION_TAG = "mlflow.note.content"
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
DESCRIPTIONS = {
    "teacher": "Teacher: the {teacher_model} teacher trained on the hard labels at T={temperature:g} for {num_steps} "
    "steps (seed {seed}, initialiser {teacher_initializer}). Its logits on the training images (teacher_logits.npy) are the soft "
    "targets of the distillations naming it.",
    "student": "Student only: the {student_model} student trained on the hard labels alone, at T=1, for {num_steps} "
    "steps (seed {seed}, recipe {recipe}); the baseline that distillation has to beat.",
    "distill": "Distillation: the {student_model} student trained on the hard labels and the teacher's soft targets "
    "at T={temperature:g} for {num_steps} steps (seed {seed}, recipe {recipe}), with the loss {loss_description}.",
}


class PartlyFailed(Exception):
    """Part of the work failed for good (sweep trials, unreadable files); the rest was done and logged."""


class Stopped(Exception):
    """The run was stopped before it finished on purpose (a sweep's scheduler stopping it early): KILLED."""


def run_name(kind: str, config: Config) -> str:
    """The kind, the temperature (a student trains at T = 1) and the seed, then every other parameter
    of the kind that is not the default: teacher-T5-seed12, student-seed12-recipe=tuned,
    distill-T20-seed12-recipe=tuned-student_model=mlp-teacher_temperature=1-teacher_initializer=he."""
    parts = [kind] + ([f"T{config.temperature:g}"] if kind != "student" else []) + [f"seed{config.seed}"]
    return "-".join(parts + [f"{name}={value}" for name, value in named_differences(kind, config).items()])


def named_differences(kind: str, config: Config) -> dict[str, str]:
    """The parameters of the kind, other than temperature, seed and data_dir, that are not the default."""
    return config.differences([name for name in KIND_PARAMETERS[kind] if name not in NOT_NAMED])


def _prepare_evaluation() -> None:
    """Do now, before the run's threads start, what mlflow.models.evaluate would otherwise do
    under MLflow's global import-hook lock at the end of the job.

    Its first call imports MLflow's evaluators; and every call, for each library with autologging
    that is imported (TensorFlow, Keras and scikit-learn in a job) and not explicitly switched
    off, runs that library's ``autolog(disable=True)`` while holding that lock, importing MLflow's
    module for the library the first time. Another thread importing meanwhile (the run's
    system-metrics thread, its heartbeat, Ray's) can hold a module lock that the import needs while
    it waits for the hook lock: the two then wait for each other for ever (seen with 1 s sampling).
    Switched off here, autologging is marked off for each library as it is imported, outside that
    lock, and TensorFlow is still imported only once the job's parameters are known to be good.
    """
    importlib.import_module("mlflow.models.evaluation.evaluator_registry")
    mlflow.autolog(disable=True)


@contextmanager
def tracked_run(kind: str, parent_run_id=None, experiment_id=None, tags=None):
    """Start (or, under ``mlflow run``, resume) a run; end it FINISHED, FAILED or KILLED.

    The error goes into a tag and an ``error.txt`` artifact, so a failed run says why in the UI,
    and whatever the run logged before the failure stays. A sweep's trials pass their parent.
    MLflow samples the machine's CPU, memory, disk and network (and NVIDIA GPUs, with the gpu
    extra) every 10 s while the run lasts: the run page's System metrics tab. The run names its
    process and beats while it lasts (``liveness``), so that it can be ended if that process dies.
    """
    if kind in JOBS:
        _prepare_evaluation()
    run = mlflow.start_run(experiment_id=experiment_id, parent_run_id=parent_run_id, tags=tags, log_system_metrics=True)
    try:
        # Where it runs, in the same write that makes it a kdflow run: liveness can always tell.
        mlflow.set_tags({tracking.KIND_TAG: kind, tracking.CODE_VERSION_TAG: tracking.code_version(), **liveness.process_tags()})
        client = mlflow.MlflowClient()
        if EXPERIMENT_KIND_TAG not in client.get_experiment(run.info.experiment_id).tags:
            # Runs starting together may all find the tag missing; one insert wins, the others
            # fail on its unique key, and the tag is there either way.
            with contextlib.suppress(MlflowException):
                client.set_experiment_tag(run.info.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        with liveness.heartbeat(run.info.run_id):
            yield run
    except BaseException as error:
        _end_failed_run(error, "KILLED" if isinstance(error, (KeyboardInterrupt, Stopped)) else "FAILED")
        raise
    mlflow.end_run("FINISHED")


def _end_failed_run(error: BaseException, status: str) -> None:
    """Record why the active run failed, then end it with ``status``, each step whatever the others do.

    The store itself may be what failed (a server down, a full artifact disk). ``mlflow.end_run``
    takes the run off MLflow's active runs before it asks the store, so even when the store cannot
    be reached MLflow's exit handler will not end the run FINISHED; it then stays RUNNING, without
    a run key it is never reused or counted, and ``kdflow-end-orphans`` ends it once its process is gone.
    """
    message = f"{type(error).__name__}: {error}"
    steps = {
        "the error tag": lambda: mlflow.set_tag(tracking.ERROR_TAG, message[:5000]),
        "error.txt": lambda: mlflow.log_text("".join(traceback.format_exception(error)), "error.txt"),
        f"the {status} status": lambda: mlflow.end_run(status),
    }
    with _interrupts_held():
        for what, step in steps.items():
            try:
                step()
            except Exception as store_error:
                print(f"kdflow: could not store {what} of the failed run: {store_error!r}", file=sys.stderr)


@contextmanager
def _interrupts_held():
    """Ignore Ctrl-C and SIGTERM while a failure is recorded: `mlflow run` answers Ctrl-C by
    sending SIGTERM to its job, and a second interrupt must not cut the record short. Signal
    handlers belong to the main thread; a Ray Tune trial runs in another one and is left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def name_run(name: str, description: str) -> None:
    """The run's name and its description, as the MLflow UI shows them."""
    mlflow.set_tags({"mlflow.runName": name, DESCRIPTION_TAG: description})


def log_params(params: dict[str, str]) -> None:
    """Log the parameters that ``mlflow run`` has not logged already (MLflow forbids changing one)."""
    already_logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({name: value for name, value in params.items() if name not in already_logged})


def describe_run(kind: str, config: Config) -> None:
    """Name the run and log its parameters.

    ``mlflow run`` logs the parameters as the user typed them (``5`` or ``5.0``, an empty value
    as ``''``) and MLflow forbids changing a logged value, so the canonical values go into the
    ``kdflow.params`` tag, which the results table and sweep resumption read.
    """
    params = config.params(kind)
    # Under `mlflow run` the parameter precision keeps what was typed ("auto"); this is what ran.
    log_params(params | {"precision_used": config.precision})
    loss_description = variants.LOSSES[config.loss].description.format(**vars(config))
    name_run(run_name(kind, config), DESCRIPTIONS[kind].format(**vars(config), loss_description=loss_description))
    mlflow.set_tag(tracking.PARAMS_TAG, json.dumps(params, sort_keys=True))


def _link_teacher() -> None:
    """Add a link to the distillation's teacher run, which the job tagged, to the description."""
    tags = mlflow.get_run(mlflow.active_run().info.run_id).data.tags
    teacher = mlflow.get_run(tags[tracking.TEACHER_RUN_TAG]).info
    link = f"[{teacher.run_name}](#/experiments/{teacher.experiment_id}/runs/{teacher.run_id})"
    mlflow.set_tag(
        DESCRIPTION_TAG, f"{tags[DESCRIPTION_TAG]} Teacher: run {link}, model `{tags[tracking.TEACHER_MODEL_TAG]}`."
    )


def log_results(anchor_runs: list | None) -> tuple[str, list[results.Table]]:
    """Regenerate the results tables of these MLflow runs (None: of the whole experiment) as the
    active run's artifacts; return the Markdown and the tables."""
    run = mlflow.active_run()
    with tempfile.TemporaryDirectory() as folder:
        markdown, tables = results.regenerate(run.info.experiment_id, Path(folder), anchor_runs)
        mlflow.log_artifacts(folder)
    return markdown, tables


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Logs each evaluation and prints one line of it: the step of the total, the validation
    accuracy and training loss, the time since the job began and, at the pace measured since the
    first evaluation (after data loading and any teacher's training), about how long is left."""

    def __init__(self, num_steps: int):
        self.num_steps = num_steps
        self.started = time.monotonic()
        self.first = None  # (time, step) of the first evaluation

    def __call__(self, evaluation) -> None:
        tracking.log_evaluation(evaluation)
        now = time.monotonic()
        line = (f"step {evaluation.step}/{self.num_steps}: validation_accuracy {evaluation.validation_accuracy:.4f}, "
                f"train_loss {evaluation.train_loss:.4f}; {_clock(now - self.started)} elapsed")
        if self.first is None:
            self.first = (now, evaluation.step)
        elif evaluation.step < self.num_steps:
            first_time, first_step = self.first
            pace = (now - first_time) / (evaluation.step - first_step)
            line += f", about {_clock(pace * (self.num_steps - evaluation.step))} left"
        print(line, flush=True)


def run_job(kind: str, config: Config, on_evaluation=None) -> None:
    """Run one job in the active tracked run: describe it, train, log the results table.

    By default each evaluation is logged and printed (``Progress``) and so is the table. A sweep's
    trial passes ``on_evaluation``, which logs each evaluation and reports it to Ray Tune, and
    prints neither: Ray Tune's progress table shows them, and the sweep prints the table at its end.
    The run key comes last: a run that failed anywhere before it is never reused or counted.
    ``auto`` precision is resolved first, on the machine that trains, so that the parameters,
    the setup, the run key and the teacher looked up all name the format actually used.
    """
    quiet.import_tensorflow()  # Before "auto" precision asks TensorFlow about this machine's GPUs.
    config = config.resolved()
    describe_run(kind, config)
    with quiet.mlflow_notes_held():
        JOBS[kind](config, on_evaluation or Progress(config.num_steps))
    if kind == "distill":
        _link_teacher()
    markdown, tables = log_results([mlflow.MlflowClient().get_run(mlflow.active_run().info.run_id)])
    if on_evaluation is None:
        print(markdown)
    cards.publish(kind, config, tables)
    tracking.mark_complete(kind, config)


def report() -> None:
    """The report job: the experiment's results table, regenerated as a tracked run of its own."""
    # A tracked run like the others, so a failed report also ends FAILED with its error recorded.
    with tracked_run("report"):
        name_run("report", "The results table, regenerated from the experiment's finished runs.")
        print(log_results(None)[0])
