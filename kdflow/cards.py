"""A model card for every registered student version: what it learned from, how, how well, and for what.

The card is written when the run ends, after its results table, so that it can give the spread
over seeds of the table cell the version counts in; a sweep writes its trials' cards again at its
end, when every seed of their cells has finished. It becomes the version's description in the
registry (what the MLflow UI's model version page shows) and the run's ``model_card.md`` artifact.
Like ``runs``, this is text for people: it may change without touching ``tracking.code_version``.
"""

import concurrent.futures
import tempfile
from pathlib import Path

import mlflow
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from kdflow import registry, results, tracking, variants
from kdflow.config import DEFAULTS, Config

ARTIFACT = "model_card.md"
# Cards written at once at a sweep's end: each waits mostly on the server, which serves several.
WRITERS = 8


def loss_form(config: Config) -> str:
    return variants.LOSSES[config.loss].description.format(**vars(config))


def reproduce_command(kind: str, config: Config, commit: str | None) -> str:
    """The ``mlflow run`` that trains this version again: every parameter that is not the default."""
    params = config.params(kind)
    defaults = DEFAULTS.params(kind)
    options = "".join(f" -P {name}={value}" for name, value in params.items() if value != defaults[name])
    source = f"git checkout {commit} && " if commit else ""
    return f"{source}mlflow run . -e {kind}{options} --env-manager local"


def _cell_of(tables: list[results.Table], run_id: str) -> tuple[str, results.Cell] | None:
    return next(((table.label, cell) for table in tables for cell in table.cells if run_id in cell.run_ids), None)


def evaluation_lines(run) -> list[str]:
    """The card's section on MLflow's evaluation of the run's model on the test images, if it ran."""
    metrics = run.data.metrics
    if "accuracy_score" not in metrics:
        return []
    return [
        "## Evaluation",
        "",
        f"MLflow's classifier evaluation (`mlflow.models.evaluate`) on the {results.TEST_IMAGES:,} test images: "
        f"accuracy {100 * metrics['accuracy_score']:.2f}%, precision {metrics['precision_score']:.4f}, recall "
        f"{metrics['recall_score']:.4f} and F1 {metrics['f1_score']:.4f} (weighted over the classes); log loss "
        f"{metrics['test_log_loss']:.4f}. Per class: the run's `per_class_metrics.csv`; the confusion matrix: its "
        "`confusion_matrix.png`.",
        "",
    ]


def render(kind: str, config: Config, run, tables: list[results.Table], teacher_run=None) -> str:
    """The card of the model of ``run`` (a student or distill run of ``config``) as Markdown."""
    tags, metrics = run.data.tags, run.data.metrics
    found = _cell_of(tables, run.info.run_id)
    if found:
        table, cell = found
        spread = f" ± {cell.std:.2f}" if cell.std is not None else " (one seed: no spread yet)"
        cell_line = f"{cell.mean:.2f}{spread} % over {cell.n} seed(s), row \"{cell.row}\" at T={cell.temperature:g} of `{table}`"
    else:
        cell_line = "not in a results table"
    if kind == "distill":
        teacher = (f"run `{teacher_run.info.run_id}` ({teacher_run.info.run_name}), model "
                   f"`{tags[tracking.TEACHER_MODEL_TAG]}`, test accuracy {100 * teacher_run.data.metrics['test_accuracy']:.2f}%")
        training = f"distilled at T={config.temperature:g}; loss {loss_form(config)}"
    else:
        teacher = "none: trained on the hard labels alone"
        training = "hard labels alone, cross-entropy at T=1"
    commit = tags.get("mlflow.source.git.commit")
    lines = [
        f"# Model card: {run.info.run_name}",
        "",
        f"- **Network**: {variants.NETWORKS[config.student_model].description} (`student_model={config.student_model}`).",
        f"- **Data**: {config.dataset}, sha256 `{tags.get(tracking.DATA_DIGEST_TAG, '?')}`; 55,000 training "
        "images, the first 5,000 of the original training split for validation, the 10,000 test images for the score.",
        f"- **Teacher**: {teacher}.",
        f"- **Training**: {training}; {config.num_steps} Adam steps of {config.batch_size} images at learning rate "
        f"{config.learning_rate:g}, the weights of the best of the evaluations every {config.eval_every} steps kept.",
        f"- **Seed** {config.seed}, **recipe** `{config.recipe}`, **precision** {config.precision}, "
        f"**code version** `{tags.get(tracking.CODE_VERSION_TAG, tracking.code_version())}`"
        + (f", **commit** `{commit}`" if commit else "") + ".",
        f"- **Test accuracy**: {100 * metrics['test_accuracy']:.2f}% "
        f"({round((1 - metrics['test_accuracy']) * results.TEST_IMAGES)} errors of {results.TEST_IMAGES:,}); "
        f"its results-table cell: {cell_line}.",
        f"- **Reproduce**: `{reproduce_command(kind, config, commit)}`.",
        "",
        *evaluation_lines(run),
        "## Intended use",
        "",
        f"Classifying {variants.DATASETS[config.dataset].description} in 28 × 28 grey images, light on dark, as the dataset's own: "
        "uint8 0-255 or float 0-1 arrays shaped (N, 28, 28) or (N, 784). `kdflow-predict` turns picture files into "
        "such images as MNIST made its digits (ink box scaled into 20 × 20, centred by mass in 28 × 28). "
        "The model answers each image's class, and with `params={\"probabilities\": True}` the probabilities of all ten too.",
        "",
        "## Limits",
        "",
        f"- It has seen {config.dataset}'s training images only: other kinds of image (letters, photos, several "
        "digits, uncentred or dark-on-light ink not converted as above) get a confident answer that means nothing.",
        "- Its probabilities are a softmax at T=1, not calibrated; the test accuracy is of one seed, and the cell's "
        "spread says how much another seed may differ.",
        "- A research reproduction of knowledge distillation: not evaluated for fairness, robustness or any use "
        "where a wrong digit has a cost.",
    ]
    return "\n".join(lines) + "\n"


def publish(kind: str, config: Config, tables: list[results.Table]) -> None:
    """Write the card of the active run's registered student version; a teacher's version gets
    its evaluation alone."""
    client = mlflow.MlflowClient()
    run = client.get_run(mlflow.active_run().info.run_id)
    versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    if kind == "teacher":
        _describe(client, versions, "\n".join([f"# Teacher: {run.info.run_name}", "", *evaluation_lines(run)]))
        return
    teacher_run = client.get_run(run.data.tags[tracking.TEACHER_RUN_TAG]) if kind == "distill" else None
    _write(client, run, render(kind, config, run, tables, teacher_run), versions)


def publish_again(students: list[tuple[str, Config, str]], tables: list[results.Table], trial_runs: list) -> None:
    """Write the cards of these (kind, config, run id) students again, as a sweep does at its end
    once every seed of their cells is in. ``trial_runs`` are the sweep's trial runs as they ended,
    the students' among them (and the teachers trained beside them); the other teachers and the
    versions are read in a search each, so a card costs its two writes alone, and several cards
    are written at once."""
    client = mlflow.MlflowClient()
    experiment_id = mlflow.active_run().info.experiment_id
    by_id = {run.info.run_id: run for run in trial_runs}
    runs = {run_id: by_id[run_id] for *_, run_id in students}
    teacher_ids = {run.data.tags[tracking.TEACHER_RUN_TAG] for run in runs.values() if tracking.TEACHER_RUN_TAG in run.data.tags}
    teachers = {run_id: by_id[run_id] for run_id in teacher_ids if run_id in by_id}  # trained in the same sweep
    teachers |= {run.info.run_id: run for run in results.search_ids(client, experiment_id, teacher_ids - teachers.keys())}
    teachers |= {run_id: client.get_run(run_id) for run_id in teacher_ids - teachers.keys()}  # a teacher named by URI
    versions = {run_id: [] for run_id in runs}
    for filter_string in results.in_filters("run_id", runs):
        for version in client.search_model_versions(filter_string):
            versions[version.run_id].append(version)

    def write(kind: str, config: Config, run_id: str) -> None:
        run = runs[run_id]
        teacher_run = teachers[run.data.tags[tracking.TEACHER_RUN_TAG]] if kind == "distill" else None
        _write(client, run, render(kind, config, run, tables, teacher_run), versions[run_id])

    with concurrent.futures.ThreadPoolExecutor(WRITERS) as pool:
        for future in [pool.submit(write, *student) for student in students]:
            future.result()  # A card that could not be written fails the caller.


def _write(client, run, card: str, versions: list) -> None:
    """The card as the run's artifact and as the description of its registered versions, unless
    they hold it already: at a sweep's end, the last seed of each cell wrote its final card."""
    if versions and all(version.description == card for version in versions):
        return
    # Straight into the run's artifact store: MlflowClient.log_text would read the run again for its location.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ARTIFACT
        path.write_text(card, encoding="utf-8")
        get_artifact_repository(run.info.artifact_uri, mlflow.get_tracking_uri()).log_artifact(str(path))
    _describe(client, versions, card)


def _describe(client, versions: list, description: str) -> None:
    """Make ``description`` that of these registered versions, each in one write."""
    registry_client = registry.without_prompt_check(client)
    for version in versions:
        registry_client.update_model_version(version.name, version.version, description=description)
