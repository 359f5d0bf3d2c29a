"""The entry points end to end: `mlflow run` of each, on real MNIST, into a real SQLite store.

The session's project store (tests/conftest.py) is filled by a few short runs (40 steps); the
tests read it as a user would, through MLflow, and add failed, killed and online runs to it. Accuracy is not judged here (that is for benchmarks/), only that
the runs are tracked, linked, repeatable and usable.
"""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from scipy.special import softmax

from kdflow import cards, config, data, precision, registry, runs, tracking
from tests.conftest import MLFLOW, ROOT, SHORT, run_id_of, short_champion_uri, succeeded

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("project_store")]  # tests/conftest.py says why

def fixture_runs(store):
    """The teacher, the two distillations and the student that the session's store was filled with."""
    return [mlflow.get_run(run_id) for run_id in (store.teacher_id, *store.distill_ids, store.student_id)]


def test_distill_trains_a_teacher_once_then_reuses_it(store):
    (teacher,) = store.runs("teacher")
    assert teacher.info.run_id == store.teacher_id
    _, first, second, _ = fixture_runs(store)
    assert "training one" in store.first_distill.stdout
    assert f"reusing teacher run {teacher.info.run_id}" in store.second_distill.stdout
    for distilled in (first, second):
        assert distilled.data.tags[tracking.TEACHER_RUN_TAG] == teacher.info.run_id
        assert distilled.data.tags[tracking.TEACHER_MODEL_TAG] == teacher.data.tags[tracking.MODEL_URI_TAG]
    assert teacher.info.run_name == "teacher-T5-seed12-num_steps=40-eval_every=20" and first.info.run_name == "distill-T5-seed12-num_steps=40-eval_every=20"
    # What the MLflow UI shows: a description on each run, linking a distillation to its teacher,
    # and an experiment that opens on the model-training view.
    teacher_link = f"[{teacher.info.run_name}](#/experiments/{teacher.info.experiment_id}/runs/{teacher.info.run_id})"
    assert teacher_link in first.data.tags[runs.DESCRIPTION_TAG]
    assert teacher.data.tags[runs.DESCRIPTION_TAG].startswith("Teacher: the cnn teacher trained on the hard labels at T=5")
    experiment = mlflow.get_experiment(first.info.experiment_id)
    assert experiment.tags[runs.EXPERIMENT_KIND_TAG] == runs.MODEL_TRAINING


def test_runs_print_kdflow_lines_and_the_libraries_only_when_verbose(store, tmp_path):
    # The first distillation trained its teacher: two processes, each importing TensorFlow.
    output = store.first_distill.stdout + store.first_distill.stderr
    for noise in ("cuInit", "absl::InitializeLog", "oneDNN", "system_metrics_monitor", "Successfully registered model",
                  "CloudPickle", "Add type hints"):
        assert noise not in output, noise
    # Each evaluation: the step of the total, the time so far, and (after the first) the time left.
    steps = [line for line in store.first_distill.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 4 and steps[0].startswith("step 20/40: validation_accuracy ") and steps[0].endswith(" elapsed")
    assert steps[1].startswith("step 40/40: ")
    assert re.search(r"^mnist: read from cache: ", store.first_distill.stdout, re.MULTILINE)
    # KDFLOW_VERBOSE brings the libraries' lines back (here MLflow's, which every machine has). In a
    # store of its own: its student's champion alias must not join the project store's.
    verbose = subprocess.run([sys.executable, str(ROOT / "entrypoints" / "student.py"), "--num_steps", "20", "--eval_every", "20"],
                             cwd=tmp_path, env={**store.env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
                                                "KDFLOW_VERBOSE": "1"}, capture_output=True, text=True, timeout=600)
    assert succeeded(verbose) and "system_metrics_monitor" in verbose.stderr


def test_runs_log_metrics_dataset_model_and_results(store):
    teacher, *_, student = fixture_runs(store)
    client = mlflow.MlflowClient()
    for run in fixture_runs(store):
        run_id = run.info.run_id
        for metric in ("train_loss", "validation_loss", "validation_accuracy"):
            assert [point.step for point in client.get_metric_history(run_id, metric)] == [20, 40]
        assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
        assert run.data.metrics["best_step"] in (20, 40)
        artifacts = {item.path for item in client.list_artifacts(run_id)}
        assert {"results.md", "results.csv", "results.json", "results.png"} <= artifacts
        # The training split, and the test images MLflow's evaluation of the model read.
        assert len(run.inputs.dataset_inputs) == 2
        (dataset_input,) = [item for item in run.inputs.dataset_inputs if item.dataset.name == "mnist-train"]
        assert run.data.tags[tracking.DATA_DIGEST_TAG].startswith(dataset_input.dataset.digest)
        assert tracking.RUN_KEY_TAG in run.data.tags  # Complete: reusable and counted.
        # precision=auto (the default) becomes this machine's format before anything is recorded;
        # the teacher, started by the distillation, is given the resolved format.
        assert run.data.params["precision"] in ("auto", precision.resolve("auto"))
        assert run.data.params["precision_used"] == precision.resolve("auto")
        # The run key's inputs are readable beside the key: kind, parameters, code version and data.
        inputs = json.loads(run.data.tags[tracking.RUN_KEY_INPUTS_TAG])
        assert inputs["params"]["precision"] == precision.resolve("auto") and inputs["code_version"] == tracking.code_version()
        # What the run page's System metrics tab draws.
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
        model_info = mlflow.models.get_model_info(run.data.tags[tracking.MODEL_URI_TAG])
        assert model_info.signature.outputs.input_names() == ["digit"]
        assert [param.name for param in model_info.signature.params] == ["probabilities"]
        assert model_info.saved_input_example_info is not None
        # MLflow's own evaluation of the logged model on the test split: the same accuracy as the
        # run's (one image apart at most: two probabilities can tie), per class, and its confusion matrix.
        assert abs(run.data.metrics["accuracy_score"] - run.data.metrics["test_accuracy"]) <= 1e-4
        assert {"per_class_metrics.csv", "confusion_matrix.png"} <= artifacts
        assert run.data.metrics["test_log_loss"] > 0
    assert "teacher_logits.npy" in {item.path for item in client.list_artifacts(teacher.info.run_id)}
    table = Path(client.download_artifacts(student.info.run_id, "results.md")).read_text()
    # A run's table holds its own row beside its setup's teachers; the report holds every row.
    assert "| Teacher |" in table and "| Student only |" in table and "| Distillation |" not in table


def test_identical_runs_log_identical_metrics(store):
    _, first, second, _ = fixture_runs(store)
    client = mlflow.MlflowClient()
    assert first.data.metrics["test_accuracy"] == second.data.metrics["test_accuracy"]
    for metric in ("train_loss", "validation_accuracy"):
        first_history = [point.value for point in client.get_metric_history(first.info.run_id, metric)]
        assert first_history == [point.value for point in client.get_metric_history(second.info.run_id, metric)]


def test_models_are_registered_and_champion_has_best_validation(store):
    client = mlflow.MlflowClient()
    versions = {version.run_id: version for version in client.search_model_versions("name = 'kd-student'")}
    assert {store.student_id, *store.distill_ids} <= set(versions)
    assert client.search_model_versions("name = 'kd-teacher'")[-1].run_id == store.teacher_id
    # The short runs' champion is the best student of their setup, and kdtf's @champion is not
    # theirs to take: a 40-step student never answers for kdtf's 5000-step setup.
    alias = short_champion_uri().rsplit("@", 1)[1]
    students = [v for v in versions.values() if v.tags[registry.ALIAS_TAG] == alias]
    champion = client.get_model_version_by_alias("kd-student", alias)
    best = max(float(version.tags[registry.VALIDATION_ACCURACY_TAG]) for version in students)
    assert float(champion.tags[registry.VALIDATION_ACCURACY_TAG]) == best
    # Ties keep the older champion: the alias moves only for a strictly better student.
    tied = [v for v in students if float(v.tags[registry.VALIDATION_ACCURACY_TAG]) == best]
    assert champion.version == min(tied, key=lambda version: int(version.version)).version
    assert registry.CHAMPION not in client.get_registered_model("kd-student").aliases
    # Every student version carries its model card, in the registry and as an artifact of its run.
    for run_id in (store.student_id, *store.distill_ids):
        assert "**Network**: softmax regression" in card(run_id) and "its results-table cell: " in card(run_id)
    assert "**Teacher**: none" in versions[store.student_id].description
    assert f"**Teacher**: run `{store.teacher_id}`" in versions[store.distill_ids[0]].description
    # Each version's page also gives MLflow's evaluation of it on the test images, teachers' too.
    distilled = mlflow.get_run(store.distill_ids[0]).data.metrics
    assert f"accuracy {100 * distilled['accuracy_score']:.2f}%, precision {distilled['precision_score']:.4f}" in card(store.distill_ids[0])
    (teacher_version,) = [v for v in client.search_model_versions("name = 'kd-teacher'") if v.run_id == store.teacher_id]
    assert teacher_version.description.startswith("# Teacher: teacher-T5-seed12")
    assert "## Evaluation" in teacher_version.description and "confusion_matrix.png" in teacher_version.description


def test_mlp_student_distilled_from_a_he_teacher_is_registered_with_its_card_and_predicts(store, fetched_mnist):
    """Hinton et al.'s experiment in small: a He-initialised teacher at T=1 and the MLP student at T=20."""
    hinton = {"recipe": "tuned", "student_model": "mlp", "teacher_initializer": "he", "teacher_temperature": "1"}
    process = succeeded(store.run("distill", temperature=20, **hinton, **SHORT))
    assert "training one" in process.stdout  # kdtf's teachers are not this one.
    distilled = mlflow.get_run(run_id_of(process))
    teacher = mlflow.get_run(distilled.data.tags[tracking.TEACHER_RUN_TAG])
    assert teacher.info.run_name == "teacher-T1-seed12-teacher_initializer=he-num_steps=40-eval_every=20"
    assert distilled.info.run_name == (
        "distill-T20-seed12-recipe=tuned-student_model=mlp-teacher_temperature=1-teacher_initializer=he-num_steps=40-eval_every=20"
    )
    table = process.stdout.split("## `recipe=tuned, student_model=mlp, num_steps=40, eval_every=20, teacher_initializer=he`")[1]
    assert "Hinton et al. T=20" in table and " errors |" in table
    # Its own registered model, so it never takes the softmax students' champion.
    client = mlflow.MlflowClient()
    (version,) = client.search_model_versions(f"run_id = '{distilled.info.run_id}'")
    assert version.name == "kd-student-mlp"
    alias = registry.champion_alias("distill", config.parse_args("distill", [f"--{name}={value}" for name, value in (
        hinton | {"temperature": 20} | SHORT).items()]).resolved())
    assert alias == "champion-recipe-tuned-teacher_initializer-he-num_steps-40-eval_every-20"
    assert client.get_model_version_by_alias("kd-student-mlp", alias).version == version.version
    card = version.description
    accuracy = distilled.data.metrics["test_accuracy"]
    for fact in [
        "784-800-800-10", f"sha256 `{data.DATASETS['mnist'].digest}`", f"run `{teacher.info.run_id}`",
        f"test accuracy {100 * teacher.data.metrics['test_accuracy']:.2f}%", "distilled at T=20",
        "CE(hard labels) + T² · CE(soft targets at T=20)", "**Seed** 12", "**recipe** `tuned`",
        f"**precision** {precision.resolve('auto')}", f"**code version** `{tracking.code_version()}`",
        f"{100 * accuracy:.2f}% ({round((1 - accuracy) * 10_000)} errors of 10,000)", "(one seed: no spread yet)",
        "-P student_model=mlp", "-P teacher_initializer=he", "-P temperature=20.0", "## Intended use", "## Limits",
    ]:
        assert fact in card, fact
    splits = fetched_mnist[0]
    images = (splits.test_images[:50] * 255).round().astype(np.uint8)
    answers = mlflow.pyfunc.load_model(f"models:/kd-student-mlp/{version.version}").predict(images)
    assert len(answers) == 50 and np.mean(answers == splits.test_labels[:50]) > 0.5


CLASSIFY = """
import json, sys
import numpy as np
import mlflow.pyfunc
images = np.load(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
as_bytes = model.predict(images, params={"probabilities": True})
as_floats = model.predict((images.reshape(-1, 784) / 255.0).astype(np.float32))
try:
    model.predict(images[:, :27, :27])
    wrong_shape = "accepted"
except Exception as error:
    wrong_shape = str(error)
print(json.dumps({"digits": as_bytes["digit"].tolist(), "float_digits": as_floats.tolist(),
                  "probability_sums": [float(sum(p)) for p in as_bytes["probabilities"]],
                  "wrong_shape": wrong_shape}))
"""


def test_champion_classifies_test_images_in_a_fresh_process(store, raw_mnist, tmp_path):
    images_path = tmp_path / "test_images.npy"
    np.save(images_path, raw_mnist["x_test"])  # uint8 (10000, 28, 28), read by the test, not kdflow
    process = succeeded(
        subprocess.run([sys.executable, "-c", CLASSIFY, str(images_path), short_champion_uri()], env=store.env, capture_output=True, text=True)
    )
    answer = json.loads(process.stdout.strip().splitlines()[-1])
    accuracy = np.mean(np.array(answer["digits"]) == raw_mnist["y_test"])
    champion = mlflow.MlflowClient().get_model_version_by_alias("kd-student", short_champion_uri().rsplit("@", 1)[1])
    # Scored in float32 by the run and by the loaded model alike, whatever format it trained in.
    assert accuracy == mlflow.get_run(champion.run_id).data.metrics["test_accuracy"]
    assert answer["float_digits"] == answer["digits"]
    assert np.allclose(answer["probability_sums"], 1.0)
    assert "(10000, 27, 27)" in answer["wrong_shape"]


def test_cached_and_online_teacher_signal_agree(store, fetched_mnist):
    """The stored logits and the teacher run again on a batch of another composition are both
    float32 (the teacher trained in bfloat16 here, if the CPU has it): they agree to float32's
    rounding, so no tie breaks differently, on any CPU."""
    splits = fetched_mnist[0]
    teacher = mlflow.get_run(store.teacher_id)
    assert teacher.data.params["precision_used"] == precision.resolve("auto")
    cached = np.load(mlflow.artifacts.download_artifacts(run_id=teacher.info.run_id, artifact_path="teacher_logits.npy"))
    teacher_model = registry.load_keras_model(teacher.data.tags[tracking.MODEL_URI_TAG])
    assert {layer.compute_dtype for layer in teacher_model.layers} == {"float32"}
    examples = np.r_[0:128, 54_872:55_000]
    online = teacher_model(splits.train_images[examples], training=False).numpy()
    scale = np.abs(cached).max()  # kdtf's N(0, 1) teacher has logits in the thousands.
    np.testing.assert_allclose(online, cached[examples], rtol=0, atol=1e-6 * scale)
    for temperature in (2.0, 5.0):
        cached_targets = softmax(cached[examples] / temperature, axis=1)
        np.testing.assert_allclose(softmax(online / temperature, axis=1), cached_targets, atol=1e-5)

    # The online path end to end, with the teacher named by its registry URI.
    process = succeeded(store.run("distill", temperature=5, teacher="models:/kd-teacher/1", teacher_signal="online", **SHORT))
    online_run = mlflow.get_run(run_id_of(process))
    assert online_run.data.tags[tracking.TEACHER_MODEL_TAG] == "models:/kd-teacher/1"
    assert online_run.data.tags[tracking.TEACHER_RUN_TAG] == teacher.info.run_id
    cached_run = mlflow.get_run(store.distill_ids[0])
    assert online_run.data.metrics["test_accuracy"] == pytest.approx(cached_run.data.metrics["test_accuracy"], abs=0.01)


@pytest.mark.parametrize(
    "parameters, named",
    [
        ({"temperature": "-1"}, "temperature"),
        ({"num_steps": "0"}, "num_steps"),
        ({"teacher": "models:/nope/1"}, "teacher"),
        ({"teacher": "models:/kd-student/1"}, "teacher"),  # Resolves, but is a student.
        ({"teacher": "file:///nowhere/model"}, "teacher"),
    ],
)
def test_bad_input_fails_fast_and_marks_the_run_failed(store, parameters, named):
    started = time.monotonic()
    process = store.run("distill", **parameters)
    assert process.returncode == 1  # `mlflow run`'s status for a failed job; the entry point itself exits 2.
    assert f"kdflow distill: error: {named}" in process.stderr
    assert time.monotonic() - started < 60  # No data, no TensorFlow, no training before the check.
    failed = store.runs("distill", status="FAILED")[-1]
    assert failed.data.tags[tracking.ERROR_TAG].startswith(f"ValueError: {named}")
    assert store.runs("distill", status="RUNNING") == []


def test_interrupted_run_ends_killed(store):
    command = [sys.executable, str(ROOT / "entrypoints" / "teacher.py"), "--num_steps", "100000", "--eval_every", "10"]
    process = subprocess.Popen(command, cwd=store.folder, env=store.env, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:  # Wait until it is really training.
        if line.startswith("step 10/"):
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) != 0
    (killed,) = store.runs("teacher", status="KILLED")
    assert killed.data.tags[tracking.ERROR_TAG].startswith("KeyboardInterrupt")
    assert mlflow.MlflowClient().get_metric_history(killed.info.run_id, "validation_accuracy")  # Kept.


def test_report_regenerates_the_table(store):
    process = succeeded(store.run("report"))
    assert "| Distillation |" in process.stdout
    (report,) = store.runs("report")
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(report.info.run_id)}
    assert {"results.md", "results.csv", "results.json", "results.png"} <= artifacts


def test_distill_can_learn_from_a_teacher_of_another_temperature(store):
    process = succeeded(store.run("distill", temperature=2, teacher_temperature=5, **SHORT))
    assert f"reusing teacher run {store.teacher_id}" in process.stdout  # Trained at T = 5.
    distilled = mlflow.get_run(run_id_of(process))
    assert distilled.info.run_name == "distill-T2-seed12-teacher_temperature=5-num_steps=40-eval_every=20"
    assert distilled.data.tags[tracking.TEACHER_RUN_TAG] == store.teacher_id
    assert "| Distillation (teacher_temperature=5) |" in process.stdout


def test_tuned_recipe_has_its_own_table_sharing_the_teachers(store):
    process = succeeded(store.run("student", recipe="tuned", **SHORT))
    tuned = mlflow.get_run(run_id_of(process))
    assert tuned.info.run_name == "student-seed12-recipe=tuned-num_steps=40-eval_every=20"
    table = process.stdout.split("## `recipe=tuned, num_steps=40, eval_every=20`")[1].split("## ")[0]
    assert "| Teacher |" in table and "| Student only |" in table and "| Distillation |" not in table


def card(run_id: str) -> str:
    """A student version's model card, the same in the registry and as its run's artifact."""
    (version,) = mlflow.MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    artifact = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=cards.ARTIFACT)).read_text()
    assert version.description == artifact
    return artifact


def test_main_entry_point_reproduces_the_table_from_finished_runs(store):
    """`mlflow run .` with no entry point is the reproduction sweep; here every trial already ran.

    A student of another seed finishes first: the seed-12 student's card, written when it was the
    only seed, must come out of the sweep giving the spread over both."""
    succeeded(store.run("student", seed=13, **SHORT))
    assert "(one seed: no spread yet)" in card(store.student_id)
    counts = {kind: len(store.runs(kind)) for kind in ("teacher", "student", "distill")}
    command = [MLFLOW, "run", str(ROOT), "--env-manager", "local",
               "-P", "temperature=5", "-P", "seed=12", *[f"-P{name}={value}" for name, value in SHORT.items()]]
    process = succeeded(subprocess.run(command, cwd=store.folder, env=store.env, capture_output=True, text=True, timeout=900))
    assert {kind: len(store.runs(kind)) for kind in counts} == counts  # Nothing trained again.
    sweep = mlflow.get_run(run_id_of(process))
    trials = Path(mlflow.artifacts.download_artifacts(run_id=sweep.info.run_id, artifact_path="trials.csv")).read_text()
    names = [f"{kind}-num_steps=40-eval_every=20" for kind in ("teacher-T5-seed12", "student-seed12", "distill-T5-seed12")]
    assert [line.split(",")[0] for line in trials.splitlines()[1:]] == names
    # Each reused trial says which finished run it matched, by its run key.
    assert all(",reused," in line and "has its run key" in line for line in trials.splitlines()[1:])
    assert "## `num_steps=40, eval_every=20`" in process.stdout and "| Distillation |" in process.stdout
    # kdtf's expected cells are of 5000-step runs: far from this 40-step table at T=2, missing at T=5, and recorded.
    assert "check: 0 within, 3 outside, 3 missing of 6 expected cells" in process.stdout
    assert sweep.data.tags["kdflow.check"].startswith("failed")
    # The resolved experiment, logged by the sweep, runs the same trials again: every one reused. With
    # check=strict, the cells outside their tolerance fail the sweep, once everything is recorded.
    again = [MLFLOW, "run", str(ROOT), "--env-manager", "local", "-P", f"experiment=runs:/{sweep.info.run_id}/experiment.yaml",
             "-P", "check=strict"]
    process = subprocess.run(again, cwd=store.folder, env=store.env, capture_output=True, text=True, timeout=900)
    assert process.returncode == 1 and "check: 0 within, 3 outside, 3 missing of 6 expected cells (check=strict)" in process.stderr
    assert {kind: len(store.runs(kind)) for kind in counts} == counts
    rerun = mlflow.get_run(re.findall(r"=== Run \(ID '(\w+)'\) failed ===", process.stderr)[-1])
    assert rerun.info.status == "FAILED" and rerun.data.tags["kdflow.check"] == sweep.data.tags["kdflow.check"]
    rerun_trials = Path(mlflow.artifacts.download_artifacts(run_id=rerun.info.run_id, artifact_path="trials.csv")).read_text()
    assert [line.split(",")[:4] for line in rerun_trials.splitlines()] == [line.split(",")[:4] for line in trials.splitlines()]
    assert "over 2 seed(s), row \"Student only\"" in card(store.student_id)
