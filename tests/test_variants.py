"""A variant is one registered entry: a toy loss and a toy student network, registered by a module
of the test's own, run end to end without any other module knowing them.

The module is named in KDFLOW_VARIANTS, which every process of a run imports: `mlflow run`'s job,
the teacher run a distillation starts, and the workers of a sweep's local Ray cluster. Its runs
must never share a results-table cell, a run name or a champion alias with kdtf's.
"""

import json
from pathlib import Path

import mlflow
import pytest

from kdflow import cards, tracking
from tests.conftest import SHORT, ProjectStore, run_id_of, succeeded

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # The sweep starts a Ray of its own.

PLUGIN = '''
"""Toy variants: a two-layer student and a loss of squared differences between soft targets."""

from kdflow import variants


def build_tiny(initializer, precision):
    import keras
    from keras import layers

    from kdflow.precision import POLICIES

    policy = POLICIES[precision]
    kernel = keras.initializers.get(initializer.kernel)
    return keras.Sequential([
        keras.Input((28, 28), name="images"), layers.Flatten(dtype=policy),
        layers.Dense(16, activation="relu", kernel_initializer=kernel, dtype=policy),
        layers.Dense(10, kernel_initializer=keras.initializers.get(initializer.kernel), dtype=policy),
        layers.Activation("linear", dtype="float32"),
    ], name="student")


def squared_loss(labels, student_logits, teacher_logits, temperature):
    import tensorflow as tf

    from kdflow import losses

    difference = losses.soft_targets(teacher_logits, temperature) - losses.soft_targets(student_logits, temperature)
    return losses.hard_loss(labels, student_logits) + temperature**2 * tf.reduce_mean(tf.reduce_sum(difference**2, axis=-1))


variants.register(variants.NETWORKS, "tiny", variants.Network(
    variants.STUDENT, build_tiny, "a toy MLP, 784-16-10", {"kdtf": "normal", "tuned": "he"}))
variants.register(variants.LOSSES, "squared", variants.Loss(
    squared_loss, "toy: CE(hard labels) + T² · squared difference of the soft targets at T={temperature:g}"))
'''


@pytest.fixture
def plugin_store(tmp_path, fetched_mnist, monkeypatch):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy_variants.py").write_text(PLUGIN)
    store = ProjectStore(tmp_path, fetched_mnist[1])
    store.env |= {"KDFLOW_VARIANTS": "toy_variants", "PYTHONPATH": str(tmp_path / "plugins")}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    return store


def results_rows(run_id: str) -> list[dict]:
    return json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="results.json")).read_text())


def test_a_registered_loss_and_network_run_end_to_end_in_cells_names_and_aliases_of_their_own(plugin_store):
    store, client = plugin_store, mlflow.MlflowClient()
    kdtf = mlflow.get_run(run_id_of(succeeded(store.run("distill", temperature=2, **SHORT))))
    squared = mlflow.get_run(run_id_of(succeeded(store.run("distill", temperature=2, loss="squared", **SHORT))))
    tiny = mlflow.get_run(run_id_of(succeeded(store.run("distill", temperature=2, loss="squared", student_model="tiny",
                                                        **SHORT))))
    # All three learn from the one teacher the first trained; the toy loss changed the training.
    assert len({run.data.tags[tracking.TEACHER_RUN_TAG] for run in (kdtf, squared, tiny)}) == 1
    assert squared.data.metrics["train_loss"] != kdtf.data.metrics["train_loss"]
    names = [run.info.run_name for run in (kdtf, squared, tiny)]
    assert names == ["distill-T2-seed12-num_steps=40-eval_every=20",
                     "distill-T2-seed12-num_steps=40-eval_every=20-loss=squared",
                     "distill-T2-seed12-student_model=tiny-num_steps=40-eval_every=20-loss=squared"]
    # Three cells, one run each: the toy loss has a row of its own, the toy network a table of its own.
    # Each run's table holds its own distillation cell beside its setup's teacher, and no other's.
    own_cells = {}
    for run in (kdtf, squared, tiny):
        rows = results_rows(run.info.run_id)
        own_cells[run.info.run_id] = {(row["table"], row["row"], row["temperature"]): row["run_ids"]
                                      for row in rows if row["row"].startswith("Distillation")}
    assert own_cells == {
        kdtf.info.run_id: {("num_steps=40, eval_every=20", "Distillation", 2.0): [kdtf.info.run_id]},
        squared.info.run_id: {("num_steps=40, eval_every=20", "Distillation (loss=squared)", 2.0): [squared.info.run_id]},
        tiny.info.run_id: {("student_model=tiny, num_steps=40, eval_every=20", "Distillation (loss=squared)", 2.0):
                           [tiny.info.run_id]},
    }
    # Registered versions: kdtf's alias, the toy loss's own alias, the toy network's own registered model.
    aliases = {}
    for run in (kdtf, squared, tiny):
        (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
        aliases[run.info.run_id] = (version.name, version.tags["champion_alias"])
    assert aliases[kdtf.info.run_id] == ("kd-student", "champion-num_steps-40-eval_every-20")
    assert aliases[squared.info.run_id] == ("kd-student", "champion-num_steps-40-eval_every-20-loss-squared")
    assert aliases[tiny.info.run_id] == ("kd-student-tiny", "champion-num_steps-40-eval_every-20-loss-squared")
    card = Path(mlflow.artifacts.download_artifacts(run_id=tiny.info.run_id, artifact_path=cards.ARTIFACT)).read_text()
    assert "**Network**: a toy MLP, 784-16-10" in card and "squared difference of the soft targets at T=2" in card
    assert "-P student_model=tiny" in card and "-P loss=squared" in card

    # A sweep over them on a local Ray: the trials already run are reused, and the toy student alone
    # trains on a Ray worker, which imports the plugin too.
    sweep = succeeded(store.run("sweep", temperature="2", seed="12", student_model="tiny", loss="squared",
                                kinds="student,distill", **SHORT))
    sweep_run = mlflow.get_run(run_id_of(sweep))
    trials = Path(mlflow.artifacts.download_artifacts(run_id=sweep_run.info.run_id, artifact_path="trials.csv")).read_text()
    outcomes = {line.split(",")[0]: line.split(",")[2] for line in trials.splitlines()[1:]}
    assert outcomes == {
        "teacher-T2-seed12-num_steps=40-eval_every=20": "reused", tiny.info.run_name: "reused",
        "student-seed12-student_model=tiny-num_steps=40-eval_every=20": "trained",
    }
    table = [row for row in results_rows(sweep_run.info.run_id) if row["table"].startswith("student_model=tiny")]
    assert {(row["row"], row["temperature"]) for row in table} == {
        ("Teacher", 2.0), ("Distillation (loss=squared)", 2.0), ("Student only", 2.0)
    }
