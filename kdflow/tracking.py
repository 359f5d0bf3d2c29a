"""MLflow runs: what each run records, how it ends, and how a matching teacher run is found.

The tracking URI comes from the environment (``mlflow run`` hands ``MLFLOW_TRACKING_URI`` and
``MLFLOW_RUN_ID`` to the entry point), else MLflow's default ``sqlite:///mlflow.db``; nothing here
calls ``set_tracking_uri``, which would break that hand-over.
"""

import hashlib
import json
import traceback
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.data.sources import LocalArtifactDatasetSource

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KIND_TAG = "kdflow.kind"
RECIPE_TAG = "kdflow.recipe"
SETUP_TAG = "kdflow.setup"
CODE_VERSION_TAG = "kdflow.code_version"
DATA_DIGEST_TAG = "kdflow.data_digest"
PARAMS_TAG = "kdflow.params"
RUN_KEY_TAG = "kdflow.run_key"
MODEL_URI_TAG = "kdflow.model_uri"
TEACHER_RUN_TAG = "kdflow.teacher_run_id"
TEACHER_MODEL_TAG = "kdflow.teacher_model_uri"
ERROR_TAG = "kdflow.error"
# The run's description in the MLflow UI (Markdown), and the experiment kind that opens the UI on
# its "Model training" view rather than the GenAI one.
DESCRIPTION_TAG = "mlflow.note.content"
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
DESCRIPTIONS = {
    "teacher": "Teacher: the CNN trained on the hard labels at T={temperature:g} for {num_steps} steps (seed {seed}). "
    "Its logits on the training images (teacher_logits.npy) are the soft targets of the distillations naming it.",
    "student": "Student only: softmax regression trained on the hard labels alone, at T=1, for {num_steps} steps "
    "(seed {seed}, recipe {recipe}); the baseline that distillation has to beat.",
    "distill": "Distillation: softmax regression trained on the hard labels and the teacher's soft targets at "
    "T={temperature:g} for {num_steps} steps (seed {seed}, recipe {recipe}).",
}


# The modules that decide what a run trains and what it stores for others to reuse (teacher
# logits, the logged model). Naming, tables, sweeps and prediction are left out, so mending them
# does not make hours of finished runs unusable for reuse.
TRAINING_MODULES = ("config", "data", "models", "losses", "training", "jobs", "registry")


def code_version() -> str:
    """A digest of the training modules: reuse is only safe when this matches, git or no git."""
    digest = hashlib.sha256()
    for module in TRAINING_MODULES:
        path = PROJECT_ROOT / "kdflow" / f"{module}.py"
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def run_name(kind: str, config) -> str:
    """E.g. teacher-T5-seed12, student-seed12, distill-T5-seed12, distill-T5-teacherT1-seed12-tuned."""
    parts = [kind]
    if kind != "student":
        parts.append(f"T{config.temperature:g}")
    if kind == "distill" and config.teacher_temperature is not None:
        parts.append(f"teacherT{config.teacher_temperature:g}")
    parts.append(f"seed{config.seed}")
    if kind != "teacher" and config.recipe != "kdtf":
        parts.append(config.recipe)
    return "-".join(parts)


@contextmanager
def tracked_run(kind: str, parent_run_id=None, experiment_id=None, tags=None):
    """Start (or, under ``mlflow run``, resume) a run; end it FINISHED, FAILED or KILLED.

    The error goes into a tag and an ``error.txt`` artifact, so a failed run says why in the UI,
    and whatever the run logged before the failure stays. A sweep's trials pass their parent.
    """
    run = mlflow.start_run(experiment_id=experiment_id, parent_run_id=parent_run_id, tags=tags)
    mlflow.set_tags({KIND_TAG: kind, CODE_VERSION_TAG: code_version()})
    client = mlflow.MlflowClient()
    if EXPERIMENT_KIND_TAG not in client.get_experiment(run.info.experiment_id).tags:
        client.set_experiment_tag(run.info.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    try:
        yield run
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        message = f"{type(error).__name__}: {error}"
        mlflow.set_tag(ERROR_TAG, message[:5000])
        mlflow.log_text("".join(traceback.format_exception(error)), "error.txt")
        mlflow.end_run(status)
        raise
    mlflow.end_run("FINISHED")


def name_run(name: str, description: str) -> None:
    """The run's name and its description, as the MLflow UI shows them."""
    mlflow.set_tags({"mlflow.runName": name, DESCRIPTION_TAG: description})


def _log_new_params(params: dict[str, str]) -> None:
    """Log the parameters that ``mlflow run`` has not logged already (MLflow forbids changing one)."""
    already_logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({name: value for name, value in params.items() if name not in already_logged})


def describe_run(kind: str, config) -> None:
    """Name the run, log its parameters and the recipe it belongs to.

    ``mlflow run`` logs the parameters as the user typed them (``5`` or ``5.0``, an empty value
    as ``''``) and MLflow forbids changing a logged value, so the canonical values go into the
    ``kdflow.params`` tag, which lookups and the results table read.
    """
    params = config.params(kind)
    _log_new_params(params)
    name_run(run_name(kind, config), DESCRIPTIONS[kind].format(**vars(config)))
    # A teacher is the same in every recipe (they differ in the student): it is the kdtf teacher.
    recipe = config.recipe if kind != "teacher" else "kdtf"
    mlflow.set_tags({RECIPE_TAG: recipe, SETUP_TAG: config.setup(), PARAMS_TAG: json.dumps(params, sort_keys=True)})


def record_teacher(teacher_run_id: str, teacher_model_uri: str) -> None:
    """Link a distillation to its teacher: tags for lookups, a link in the description for people."""
    teacher = mlflow.get_run(teacher_run_id)
    link = f"[{teacher.info.run_name}](#/experiments/{teacher.info.experiment_id}/runs/{teacher_run_id})"
    description = mlflow.get_run(mlflow.active_run().info.run_id).data.tags.get(DESCRIPTION_TAG, "")
    mlflow.set_tags(
        {
            TEACHER_RUN_TAG: teacher_run_id,
            TEACHER_MODEL_TAG: teacher_model_uri,
            DESCRIPTION_TAG: f"{description} Teacher: run {link}, model `{teacher_model_uri}`.",
        }
    )


def describe_sweep(sweep, recipe: dict[str, str]) -> None:
    """Name the sweep run and log its parameters (those ``mlflow run`` has not logged already)."""
    from kdflow.sweeps import teacher_temperatures  # Here, not at the top: sweeps imports this module.

    params = {name: ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
              for name, value in vars(sweep).items()} | recipe
    _log_new_params(params)
    del params["resume"]  # A resumed sweep has the parameters of the sweep it continues.
    temperatures = ",".join(f"{t:g}" for t in sweep.temperatures)
    seeds = ",".join(map(str, sweep.seeds))
    teachers = teacher_temperatures(sweep, recipe)
    fixed_teacher = f"-teacherT{','.join(f'{t:g}' for t in teachers)}" if teachers != list(sweep.temperatures) else ""
    preset = f"-{recipe['recipe']}" if recipe["recipe"] != "kdtf" else ""
    name_run(
        f"sweep-T{temperatures}{fixed_teacher}-seeds{seeds}{preset}",
        f"Sweep of {', '.join(sweep.kinds)} trials at T={temperatures}, seeds {seeds}, recipe {recipe['recipe']}, "
        "on Ray Tune. Every trial is a child run; trials.csv says which were trained, reused or failed.",
    )
    mlflow.set_tags({PARAMS_TAG: json.dumps(params, sort_keys=True), RECIPE_TAG: recipe["recipe"]})


def run_key(kind: str, config, data_digest: str) -> str:
    """Two runs with the same key train the same thing: kind, parameters, code and data agree.

    ``data_dir`` is left out because it only says where the data came from; the digest pins what.
    """
    params = {name: value for name, value in config.params(kind).items() if name != "data_dir"}
    identity = json.dumps([kind, params, code_version(), data_digest], sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def log_dataset(kind: str, config, splits) -> None:
    """Record the training split as the run's input, with the checked content digest."""
    dataset = mlflow.data.from_numpy(
        splits.train_images,
        targets=splits.train_labels,
        # Given as an object: MLflow cannot guess a source type from text like "cache: /path".
        source=LocalArtifactDatasetSource(splits.source),
        name=f"{splits.dataset}-train",
        digest=splits.digest[:32],
    )
    mlflow.log_input(dataset, context="training")
    mlflow.set_tags({DATA_DIGEST_TAG: splits.digest, RUN_KEY_TAG: run_key(kind, config, splits.digest)})


def log_evaluation(evaluation) -> None:
    mlflow.log_metrics(
        {
            "train_loss": evaluation.train_loss,
            "validation_loss": evaluation.validation_loss,
            "validation_accuracy": evaluation.validation_accuracy,
        },
        step=evaluation.step,
    )
    print(
        f"step {evaluation.step}: train_loss {evaluation.train_loss:.4f} "
        f"validation_loss {evaluation.validation_loss:.4f} "
        f"validation_accuracy {evaluation.validation_accuracy:.4f}",
        flush=True,
    )


def find_finished_run(kind: str, config, data_digest: str, experiment_id: str):
    """The newest FINISHED run of the experiment that trained exactly this (same run key), or None."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(
            f"tags.`{RUN_KEY_TAG}` = '{run_key(kind, config, data_digest)}' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


def train_teacher_run(config):
    """Train a teacher as a run of its own through the project's ``teacher`` entry point.

    This is MLflow's multistep-workflow pattern: the step is an ``mlflow run`` of the same project,
    so it is tracked, named and reusable like a teacher started by hand.
    """
    submitted = mlflow.projects.run(
        str(PROJECT_ROOT),
        entry_point="teacher",
        parameters=config.params("teacher"),
        experiment_id=mlflow.active_run().info.experiment_id,
        env_manager="local",
        synchronous=True,
    )
    return mlflow.get_run(submitted.run_id)
