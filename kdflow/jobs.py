"""The training jobs: a teacher, a student, or a distilled student, each inside the active MLflow run.

Each job takes its configuration and a callable that records each evaluation
(``tracking.log_evaluation``; a sweep's trial also reports it to Ray Tune). It logs, in order: the
dataset, a metric line per evaluation, the final scores, the registered model and MLflow's
evaluation of it on the test split (and, for a teacher, its logits on the training split, with
their digest and shape). Naming the run, its
parameters, the results table and moving the champion alias once the run is complete are the
``runs`` and ``registry`` modules', after the job. TensorFlow is imported inside the jobs, once the
parameters are known to be good, so bad input fails fast.
"""

import time

import mlflow
from mlflow.exceptions import ExecutionException

from kdflow import data, registry, tracking, variants
from kdflow.config import KIND_PARAMETERS, Config


def _prepare(kind: str, config: Config):
    """Load and log the data."""
    splits = data.load_dataset(config.dataset, config.data_dir)
    tracking.log_dataset(kind, config, splits)
    return splits


def _finish(kind: str, config: Config, model, result, splits) -> None:
    """Log the scores and register the model, the float32 network with the best weights."""
    tracking.wait_for_evaluations()  # A run with scores has every evaluation's metrics stored.
    mlflow.log_metrics(
        {
            "test_accuracy": result.test_accuracy,
            "test_log_loss": result.test_log_loss,
            "best_validation_accuracy": result.best_validation_accuracy,
            "best_step": result.best_step,
            "train_images_per_second": result.train_images_per_second,
            "train_seconds": result.train_seconds,
            "evaluation_seconds": result.evaluation_seconds,
        }
    )
    model_info = registry.log_model(model, kind, config, splits.validation_images, result.best_validation_accuracy)
    started = time.perf_counter()
    registry.evaluate(model_info.model_id, f"{splits.dataset}-test", splits.test_labels, result.test_digits)
    mlflow.log_metric("model_evaluation_seconds", time.perf_counter() - started)
    mlflow.set_tag(tracking.MODEL_URI_TAG, model_info.model_uri)
    print(f"{kind}: test_accuracy {result.test_accuracy:.4f} (best validation step {result.best_step})")


def _train_on_hard_labels(kind: str, config: Config, build_model, temperature: float, on_evaluation):
    """Train a fresh network on the labels alone at ``temperature``; return it (float32) and the data."""
    from kdflow import losses, training

    splits = _prepare(kind, config)

    def objective(model, images, labels):
        return losses.hard_loss(labels, model(images, training=True), temperature)

    arrays = (splits.train_images, splits.train_labels)
    model, result = training.train(build_model, objective, arrays, splits, config, temperature, on_evaluation)
    _finish(kind, config, model, result, splits)
    return model, splits


def train_teacher(config: Config, on_evaluation) -> None:
    """The teacher network trained at temperature T on hard labels, as kdtf did; stores its training logits."""
    from kdflow import training

    def build_teacher(precision: str):
        return variants.build_network(config.teacher_model, config.teacher_initializer, precision)

    teacher, splits = _train_on_hard_labels("teacher", config, build_teacher, config.temperature, on_evaluation)
    # Every distillation run at any temperature reads these instead of running the teacher again.
    started = time.perf_counter()
    logits = training.predict_logits(teacher, splits.train_images)
    mlflow.log_metric("teacher_logits_seconds", time.perf_counter() - started)
    tracking.log_teacher_logits(logits)


def _student_builder(config: Config):
    """The run's student network, built in a given number format."""
    return lambda precision: variants.build_network(config.student_model, config.student_initializer(), precision)


def train_student(config: Config, on_evaluation) -> None:
    """The student network on hard labels alone, at T = 1: kdtf's "student only" row."""
    _train_on_hard_labels("student", config, _student_builder(config), 1.0, on_evaluation)


def _train_teacher_run(teacher_config: Config):
    """Train a teacher as a run of its own through the project's ``teacher`` entry point.

    This is MLflow's multistep-workflow pattern: the step is an ``mlflow run`` of the same project,
    so it is tracked, named and reusable like a teacher started by hand, and a child of this run.
    """
    parent = mlflow.active_run().info
    try:
        submitted = mlflow.projects.run(
            str(tracking.PROJECT_ROOT),
            entry_point="teacher",
            parameters=teacher_config.params("teacher"),
            experiment_id=parent.experiment_id,
            env_manager="local",
            synchronous=True,
        )
    except ExecutionException:
        # The teacher run recorded why it failed; say so here, where the user is looking.
        (failed,) = mlflow.search_runs(
            experiment_ids=[parent.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'",
            order_by=["attributes.start_time DESC"], max_results=1, output_format="list",
        )
        error = failed.data.tags.get(tracking.ERROR_TAG, "no error recorded")
        where = f"(in the teacher run {failed.info.run_id} this distillation started)"
        if error.startswith("ValueError: "):  # A bad parameter the two runs share, such as data_dir.
            raise ValueError(f"{error.removeprefix('ValueError: ')} {where}") from None
        raise RuntimeError(f"{error} {where}") from None
    return mlflow.get_run(submitted.run_id)


def choose_teacher(config: Config):
    """(teacher run, model URI) of the distillation: the one named, else the newest matching
    teacher run of the experiment whose logits check out, else one trained now. Runs before any
    data is read, so a teacher URI that does not resolve, or whose logits are wrong, fails fast."""
    if config.teacher:
        model = registry.resolve(config.teacher, "teacher")
        teacher_run = mlflow.get_run(model.run_id) if model.run_id else None
        kind = teacher_run.data.tags.get(tracking.KIND_TAG) if teacher_run else None
        if kind != "teacher":
            raise ValueError(
                f"teacher: {config.teacher!r} is not the model of a kdflow teacher run (its run's kind: {kind}); "
                "name a kd-teacher version, e.g. models:/kd-teacher/1"
            )
        if config.teacher_signal == "cached":
            try:
                tracking.teacher_logits(teacher_run)
            except ValueError as error:
                raise ValueError(f"teacher: {config.teacher!r}: {error}; use teacher_signal=online or another teacher") from None
        return teacher_run, config.teacher
    experiment_id = mlflow.active_run().info.experiment_id
    teacher_config = config.teacher_config()
    # Any source of the dataset must match its pinned digest, so the digest is known before loading.
    data_digest = variants.DATASETS[config.dataset].digest
    key = tracking.run_key("teacher", teacher_config, data_digest)
    teacher_run = tracking.find_finished_run("teacher", key, experiment_id)
    if teacher_run is None:
        print(f"no finished teacher run in this experiment has the run key {key}; training one", flush=True)
        teacher_run = _train_teacher_run(teacher_config)  # Raises if that run fails.
    else:
        print(f"reusing teacher run {teacher_run.info.run_id} ({teacher_run.info.run_name}): it has the run key {key}", flush=True)
    return teacher_run, teacher_run.data.tags[tracking.MODEL_URI_TAG]


def distill(config: Config, on_evaluation) -> None:
    """The student trained on hard labels and the teacher's soft targets at temperature T."""
    teacher_run, teacher_model_uri = choose_teacher(config)
    if teacher_run.data.tags.get(tracking.DATA_DIGEST_TAG) != variants.DATASETS[config.dataset].digest:
        raise ValueError(
            f"teacher: run {teacher_run.info.run_id} was trained on other data than {config.dataset}; "
            "name a teacher trained on this dataset"
        )
    # The teacher's recorded digest names the logits learned from (the run key includes it).
    teacher_tags = {tracking.TEACHER_RUN_TAG: teacher_run.info.run_id, tracking.TEACHER_MODEL_TAG: teacher_model_uri}
    if tracking.TEACHER_LOGITS_DIGEST_TAG in teacher_run.data.tags:
        teacher_tags[tracking.TEACHER_LOGITS_DIGEST_TAG] = teacher_run.data.tags[tracking.TEACHER_LOGITS_DIGEST_TAG]
    mlflow.set_tags(teacher_tags)
    from kdflow import training

    loss = variants.LOSSES[config.loss]
    loss_parameters = {name: getattr(config, name) for name in loss.parameters}

    def objective(student, images, labels, teacher_logits):
        student_logits = student(images, training=True)
        return loss.function(labels, student_logits, teacher_logits, config.temperature, **loss_parameters)

    splits = _prepare("distill", config)
    if config.teacher_signal == "cached":
        arrays = (splits.train_images, splits.train_labels, tracking.teacher_logits(teacher_run))
        step_objective = objective
    else:
        # kdtf's way: the teacher, dropout off, runs on every student batch (in float32, as stored).
        teacher = registry.load_keras_model(teacher_model_uri)
        arrays = (splits.train_images, splits.train_labels)

        def step_objective(student, images, labels):
            return objective(student, images, labels, teacher(images, training=False))

    student, result = training.train(_student_builder(config), step_objective, arrays, splits, config, 1.0, on_evaluation)
    _finish("distill", config, student, result, splits)


JOBS = {"teacher": train_teacher, "student": train_student, "distill": distill}
assert JOBS.keys() == KIND_PARAMETERS.keys()
