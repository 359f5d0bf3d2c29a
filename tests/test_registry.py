"""The champion alias: per dataset and setup, and right when many runs finish at once.

Several processes register a version each against a real `mlflow server` on 127.0.0.1 and crown
the champion at the same moment, as trials of a sweep finishing together would.
"""

import dataclasses
import os
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.tracking._model_registry.client import ModelRegistryClient

from kdflow import registry, tracking
from kdflow.config import DEFAULTS, Config
from scripts.servers import free_port
from tests.conftest import MLFLOW, serving

pytestmark = pytest.mark.slow

PROMOTE = """
import sys, time
import mlflow
from kdflow import registry
name, alias, accuracy, source, start_at = sys.argv[1:]
client = mlflow.MlflowClient()
time.sleep(max(0.0, float(start_at) - time.time()))  # Start together.
version = client.create_model_version(name, source=source, run_id=source.split("/")[1]).version
client.set_model_version_tag(name, version, registry.ALIAS_TAG, alias)
client.set_model_version_tag(name, version, registry.VALIDATION_ACCURACY_TAG, accuracy)
print(version, registry.crown_champion(name, alias))
"""


def test_names_and_aliases_keep_datasets_networks_and_setups_apart():
    assert registry.registered_name("distill", DEFAULTS) == "kd-student"
    assert registry.registered_name("student", Config(dataset="fashion_mnist")) == "kd-student-fashion-mnist"
    assert registry.registered_name("teacher", Config(dataset="fashion_mnist")) == "kd-teacher-fashion-mnist"
    assert registry.registered_name("student", Config(student_model="mlp", dataset="fashion_mnist")) == "kd-student-mlp-fashion-mnist"
    # Runs name their aliases from the configuration as they trained it, precision=auto resolved.
    default = DEFAULTS.resolved()
    assert registry.champion_alias("distill", default) == registry.champion_alias(
        "student", Config(dataset="fashion_mnist", temperature=2, seed=13).resolved()) == "champion"
    # Temperatures and teachers are what a champion is chosen over; everything else names its own.
    assert registry.champion_alias("distill", Config(temperature=2, teacher_temperature=1)) == "champion"
    short = Config(num_steps=40, eval_every=20, learning_rate=0.0005, precision="float32")
    assert registry.champion_alias("distill", short).startswith("champion-num_steps-40-learning_rate-0_0005-eval_every-20")
    weighted = Config(loss="weighted", hard_label_weight=0.5)
    assert registry.champion_alias("distill", weighted) == "champion-loss-weighted-hard_label_weight-0_5"
    # A student alone has no loss or teacher: the distillation's parameters never name its alias.
    assert registry.champion_alias("student", Config(teacher_initializer="he", recipe="tuned")) == "champion-recipe-tuned"
    # kdtf's setup in the format auto does not pick here is a setup of its own, with its own champion.
    other = "float32" if default.precision != "float32" else "bfloat16"
    assert registry.champion_alias("distill", dataclasses.replace(default, precision=other)) == f"champion-precision-{other}"


def test_many_runs_finishing_at_once_leave_the_best_champion(tmp_path, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    command = [MLFLOW, "server", "--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1], "--workers", "1",
               "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--artifacts-destination", str(tmp_path / "art")]
    with serving(command, f"{uri}/health"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        client = mlflow.MlflowClient()
        client.create_registered_model("kd-student")
        with mlflow.start_run() as run:
            mlflow.log_text("a stand-in: the registry does not read it", "model/MLmodel")
            mlflow.set_tag(tracking.RUN_KEY_TAG, "complete")  # What a run writes last, once complete.
        # A run that failed after registering its version, the best of all: it must never hold the alias.
        with pytest.raises(RuntimeError), mlflow.start_run() as failed:
            raise RuntimeError("stopped after registering its model")
        source, failed_source = f"runs:/{run.info.run_id}/model", f"runs:/{failed.info.run_id}/model"
        alias = registry.CHAMPION
        accuracies = [0.90, 0.95, 0.91, 0.93, 0.97, 0.92, 0.94, 0.96]
        start_at = str(time.time() + 12)  # Time enough for every process to import MLflow first.

        def promote(alias, accuracy, source=source):
            command = [sys.executable, "-c", PROMOTE, "kd-student", alias, str(accuracy), source, start_at]
            return subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        processes = [promote(alias, accuracy) for accuracy in accuracies]
        # A better student of another setup at the same moment: it must not take this setup's alias.
        processes.append(promote("champion-other", 0.99))
        processes.append(promote(alias, 0.999, failed_source))
        for process in processes:
            _, errors = process.communicate(timeout=300)
            assert process.returncode == 0, errors[-3000:]
        champion = client.get_model_version_by_alias("kd-student", alias)
        assert float(champion.tags[registry.VALIDATION_ACCURACY_TAG]) == max(accuracies)
        assert float(client.get_model_version_by_alias("kd-student", "champion-other").tags[
            registry.VALIDATION_ACCURACY_TAG]) == 0.99


def test_choosing_a_champion_reads_only_the_versions_competing_for_its_alias(tmp_path, monkeypatch):
    """The registry grows with every run of every setup; a champion is chosen among its own alias's
    versions, and the server answers with those alone, however many others the model has."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    client = mlflow.MlflowClient()
    client.create_registered_model("kd-student")
    with mlflow.start_run() as run:
        mlflow.set_tag(tracking.RUN_KEY_TAG, "complete")
    source = f"runs:/{run.info.run_id}/model"

    def register(alias, accuracy):
        version = client.create_model_version("kd-student", source=source, run_id=run.info.run_id).version
        client.set_model_version_tag("kd-student", version, registry.ALIAS_TAG, alias)
        client.set_model_version_tag("kd-student", version, registry.VALIDATION_ACCURACY_TAG, str(accuracy))
        return version

    for index in range(60):  # Other setups' students, better than any of this alias's.
        register(f"champion-loss-weighted-hard_label_weight-0_{index:02d}", 0.99)
    own = [register("champion", accuracy) for accuracy in (0.90, 0.93, 0.91)]
    answered = []
    search = mlflow.MlflowClient.search_model_versions

    def counting_search(self, *arguments, **keywords):
        versions = search(self, *arguments, **keywords)
        answered.append(len(versions))
        return versions

    monkeypatch.setattr(mlflow.MlflowClient, "search_model_versions", counting_search)
    writes = []
    set_alias = ModelRegistryClient.set_registered_model_alias

    def counting_write(self, *arguments):
        writes.append(arguments)
        return set_alias(self, *arguments)

    monkeypatch.setattr(ModelRegistryClient, "set_registered_model_alias", counting_write)
    assert registry.crown_champion("kd-student", "champion") == own[1]
    assert answered and set(answered) == {3}, answered
    # A run that does not beat the champion, the usual case, leaves the alias as it is, unwritten.
    register("champion", 0.92)
    assert registry.crown_champion("kd-student", "champion") == own[1]
    assert writes == [("kd-student", "champion", own[1])]
    assert client.get_model_version_by_alias("kd-student", "champion").version == own[1]
