"""The jobs behind the entry points: train a teacher, a student or a distilled student; report.

Each job runs inside one tracked MLflow run and logs, in order: parameters, the dataset, a metric
line per evaluation, the final scores, the registered model, and the regenerated results table.
TensorFlow is imported only once the parameters are known to be good, so bad input fails fast.
"""

import signal
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from kdflow import config as configuration
from kdflow import registry, results, tracking

TEACHER_LOGITS_ARTIFACT = "teacher_logits.npy"


class PartlyFailed(Exception):
    """Part of the work failed for good (sweep trials, unreadable files); the rest was done and logged."""


def main(kind: str, argv: list[str]) -> int:
    """Entry-point body: parse, run the job in a tracked run, print the table; exit status out."""
    values = configuration.parse_args(kind, argv)
    return exit_status(kind, lambda: run_job(kind, values))


def exit_status(name: str, body) -> int:
    """Run an entry point's body and turn its outcome into a message and an exit status."""
    # `kill` and Ray stop workers with SIGTERM; treat it like Ctrl-C so the run ends KILLED.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        body()
    except ValueError as error:
        print(f"kdflow {name}: error: {error}", file=sys.stderr)
        return 2
    except PartlyFailed as error:
        print(f"kdflow {name}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kdflow {name}: interrupted; the run is marked KILLED", file=sys.stderr)
        return 130
    return 0


def run_job(kind: str, values: dict[str, str], parent_run_id=None, experiment_id=None, tags=None):
    """Run one job from its parameter strings in a tracked run; return the finished run."""
    with tracking.tracked_run(kind, parent_run_id, experiment_id, tags) as run:
        config = configuration.make_config(values)
        tracking.describe_run(kind, config)
        JOBS[kind](config)
        print(_log_results())
    return mlflow.get_run(run.info.run_id)


def sweep_main(argv: list[str]) -> int:
    """The sweep entry point: trials over a Ray cluster under one parent run; non-zero if any failed."""
    return exit_status("sweep", lambda: _sweep(*configuration.parse_sweep_args(argv)))


def _sweep(sweep, recipe: dict[str, str]) -> None:
    from kdflow import sweeps

    with tracking.tracked_run("sweep"):
        tracking.describe_sweep(sweep, recipe)
        rows = sweeps.run_sweep(sweep, recipe)
        trials = pd.DataFrame(rows)
        mlflow.log_text(trials.to_csv(index=False), "trials.csv")
        print(trials.to_string(index=False))
        print(_log_results())
        failed = sorted(row["trial"] for row in rows if row["outcome"].startswith("failed"))
        if failed:
            raise PartlyFailed(f"{len(failed)} of {len(rows)} trials failed: {', '.join(failed)}; each failed run holds its error")


def report_main(argv: list[str]) -> int:
    """Regenerate the results table of this run's experiment and log it as the run's artifacts."""
    return exit_status("report", lambda: _report(argv))


def _report(argv: list[str]) -> None:
    # A tracked run like the others, so a failed report also ends FAILED with its error recorded.
    with tracking.tracked_run("report"):
        tracking.name_run("report", "The results table, regenerated from the experiment's finished runs.")
        if argv:
            raise ValueError(f"report takes no parameters, got {' '.join(argv)}")
        print(_log_results())


def _log_results() -> str:
    run = mlflow.active_run()
    with tempfile.TemporaryDirectory() as folder:
        table = results.regenerate(run.info.experiment_id, Path(folder), include_run_id=run.info.run_id)
        mlflow.log_artifacts(folder)
    return table


def _prepare(kind, config):
    """Load and log the data."""
    from kdflow import data

    splits = data.load_dataset(config.dataset, config.data_dir)
    tracking.log_dataset(kind, config, splits)
    return splits


def _finish(kind, model, result, splits):
    """Log the scores and the model; a student may become the champion."""
    mlflow.log_metrics(
        {
            "test_accuracy": result.test_accuracy,
            "best_validation_accuracy": result.best_validation_accuracy,
            "best_step": result.best_step,
            "train_images_per_second": result.train_images_per_second,
            "train_seconds": result.train_seconds,
            "evaluation_seconds": result.evaluation_seconds,
        }
    )
    model_info = registry.log_model(model, kind, splits.validation_images, result.best_validation_accuracy)
    mlflow.set_tag(tracking.MODEL_URI_TAG, model_info.model_uri)
    if kind != "teacher":
        name, version = registry.REGISTERED_NAMES[kind], model_info.registered_model_version
        if registry.promote_if_better(name, version, result.best_validation_accuracy):
            print(f"{name} version {version} is now @{registry.CHAMPION}")
    print(f"{kind}: test_accuracy {result.test_accuracy:.4f} (best validation step {result.best_step})")


def _train_on_hard_labels(kind, config, build_model, temperature):
    """Train a fresh network on the labels alone at ``temperature``; return it and the data."""
    from kdflow import losses, training

    splits = _prepare(kind, config)
    training.make_deterministic(config.seed)
    model = build_model()

    def objective(images, labels):
        return losses.hard_loss(labels, model(images, training=True), temperature)

    batches = training.training_batches((splits.train_images, splits.train_labels), config.batch_size, config.seed)
    result = training.train(model, objective, batches, splits, config, temperature, tracking.log_evaluation)
    _finish(kind, model, result, splits)
    return model, splits


def train_teacher(config):
    """The CNN trained at temperature T on hard labels, as kdtf did; stores its training logits."""
    from kdflow import models, training

    teacher, splits = _train_on_hard_labels("teacher", config, models.build_teacher, config.temperature)
    # Every distillation run at any temperature reads these instead of running the teacher again.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / TEACHER_LOGITS_ARTIFACT
        started = time.perf_counter()
        np.save(path, training.predict_logits(teacher, splits.train_images))
        mlflow.log_metric("teacher_logits_seconds", time.perf_counter() - started)
        mlflow.log_artifact(str(path))


def train_student(config):
    """Softmax regression on hard labels alone, at T = 1: kdtf's "student only" row."""
    from kdflow import models

    _train_on_hard_labels("student", config, lambda: models.build_student(config.recipe), 1.0)


def matching_teacher(config, data_digest: str) -> tuple[str, str]:
    """(run id, model URI) of the newest matching teacher in the experiment, trained if there is none."""
    experiment_id = mlflow.active_run().info.experiment_id
    teacher_config = config.teacher_config()
    teacher_run = tracking.find_finished_run("teacher", teacher_config, data_digest, experiment_id)
    if teacher_run is None:
        print("no matching teacher run in this experiment; training one", flush=True)
        teacher_run = tracking.train_teacher_run(teacher_config)  # Raises if that run fails.
    else:
        print(f"reusing teacher run {teacher_run.info.run_id}", flush=True)
    return teacher_run.info.run_id, teacher_run.data.tags[tracking.MODEL_URI_TAG]


def cached_teacher_logits(teacher_run_id: str, data_digest: str) -> np.ndarray:
    """The teacher's logits on the training split, as stored with its run."""
    teacher_run = mlflow.get_run(teacher_run_id)
    if teacher_run.data.tags.get(tracking.DATA_DIGEST_TAG) != data_digest:
        raise ValueError(
            f"teacher: run {teacher_run_id} was trained on other data than this run's; "
            "use teacher_signal=online or a teacher trained on this dataset"
        )
    try:
        path = mlflow.artifacts.download_artifacts(run_id=teacher_run_id, artifact_path=TEACHER_LOGITS_ARTIFACT)
    except (MlflowException, OSError) as error:
        raise ValueError(
            f"teacher: run {teacher_run_id} has no stored {TEACHER_LOGITS_ARTIFACT}; use teacher_signal=online"
        ) from error
    return np.load(path)


def distill(config):
    """The student trained on hard labels and the teacher's soft targets at temperature T."""
    if config.teacher:
        # A teacher URI that does not resolve fails here, before any data is read.
        teacher_run_id, teacher_model_uri = registry.resolve(config.teacher, "teacher").run_id, config.teacher
    from kdflow import losses, models, training

    splits = _prepare("distill", config)
    if not config.teacher:
        teacher_run_id, teacher_model_uri = matching_teacher(config, splits.digest)
    tracking.record_teacher(teacher_run_id, teacher_model_uri)
    training.make_deterministic(config.seed)
    student = models.build_student(config.recipe)

    def objective(images, labels, teacher_logits):
        student_logits = student(images, training=True)
        return losses.distillation_loss(labels, student_logits, teacher_logits, config.temperature, config.alpha)

    if config.teacher_signal == "cached":
        teacher_logits = cached_teacher_logits(teacher_run_id, splits.digest)
        arrays = (splits.train_images, splits.train_labels, teacher_logits)
        step_objective = objective
    else:
        # kdtf's way: the teacher, dropout off, runs on every student batch.
        teacher = registry.load_keras_model(teacher_model_uri)
        arrays = (splits.train_images, splits.train_labels)

        def step_objective(images, labels):
            return objective(images, labels, teacher(images, training=False))

    batches = training.training_batches(arrays, config.batch_size, config.seed)
    result = training.train(student, step_objective, batches, splits, config, 1.0, tracking.log_evaluation)
    _finish("distill", student, result, splits)


JOBS = {"teacher": train_teacher, "student": train_student, "distill": distill}
