"""One place defines the parameters: the MLproject, the entry points and the checks agree with it."""

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from kdflow import config, runs, sweeps

ROOT = Path(__file__).resolve().parents[1]
MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())


@pytest.mark.parametrize("kind", config.KINDS)
def test_mlproject_parameters_mirror_config(kind):
    entry_point = MLPROJECT["entry_points"][kind]
    assert list(entry_point["parameters"]) == list(config.KIND_PARAMETERS[kind])
    for name, spec in entry_point["parameters"].items():
        assert str(spec["default"]) == config.to_text(getattr(config.DEFAULTS, name)), name
        # Every parameter reaches the script under its own name.
        assert f"--{name} {{{name}}}" in entry_point["command"]
    assert entry_point["command"].startswith(f"python entrypoints/{kind}.py ")


def test_defaults_are_the_kdtf_recipe():
    assert config.DEFAULTS.params("distill") == {
        "recipe": "kdtf", "student_model": "softmax", "teacher_initializer": "normal",
        "teacher_temperature": "", "temperature": "5.0", "num_steps": "5000", "batch_size": "128", "learning_rate": "0.001",
        "eval_every": "100", "seed": "12", "dataset": "mnist", "data_dir": "", "teacher": "",
        "teacher_signal": "cached", "hard_label_weight": "", "precision": "auto",
    }


@pytest.mark.parametrize(
    "name, text",
    [
        ("temperature", "-1"), ("temperature", "0"), ("temperature", "nan"), ("temperature", "inf"),
        ("num_steps", "0"), ("batch_size", "-3"), ("eval_every", "0"), ("learning_rate", "0"),
        ("dataset", "cifar10"), ("teacher_signal", "sometimes"), ("hard_label_weight", "1.5"), ("seed", "twelve"),
        ("num_steps", "2.5"), ("recipe", "best"), ("teacher_temperature", "-2"),
        ("seed", "-1"), ("seed", str(2**32)), ("batch_size", "55001"), ("precision", "int8"),
        ("student_model", "resnet"), ("teacher_initializer", "zeros"),
    ],
)
def test_bad_values_raise_value_error_naming_the_parameter(name, text):
    with pytest.raises(ValueError, match=name):
        config.parse_args("distill", [f"--{name}", text])


def test_parse_args_round_trip():
    made = config.parse_args("distill", ["--temperature", "2", "--hard_label_weight", "0.5", "--num_steps", "10"])
    assert (made.temperature, made.hard_label_weight, made.num_steps, made.seed) == (2.0, 0.5, 10, 12)
    assert made.loss == "weighted"
    assert config.parse_args("distill", []) == config.DEFAULTS and config.DEFAULTS.loss == "kdtf"
    assert math.isclose(config.parse_args("teacher", []).learning_rate, 0.001)
    # What goes out as parameters comes back as the same values.
    assert config.parse_args("distill", [f"--{k}={v}" for k, v in made.params("distill").items()]) == made


def test_student_takes_no_temperature():
    with pytest.raises(ValueError, match="unrecognized arguments: --temperature"):
        config.parse_args("student", ["--temperature", "5"])


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--seeds", "12,13,12"], "seeds must not repeat"), (["--temperatures", "2,5,2.0"], "temperatures must not repeat"),
        (["--kinds", "student,student"], "kinds must not repeat"), (["--seeds", "-1"], "seeds must be integers from 0"),
        (["--batch_size", "100000"], "batch_size"), (["--resume", "maybe"], "resume"),
    ],
)
def test_bad_sweep_values_are_refused_before_any_cluster(argv, named):
    with pytest.raises(ValueError, match=named):
        sweeps.parse_args(argv)


def test_the_old_alpha_is_refused_naming_its_replacement():
    with pytest.raises(ValueError, match="alpha was renamed hard_label_weight.*alpha=a is hard_label_weight=1-a"):
        config.parse_args("distill", ["--alpha", "0.9"])
    with pytest.raises(ValueError, match="alpha was renamed hard_label_weight"):
        sweeps.parse_args(["--alpha", "0.9"])


def test_every_loss_and_recipe_names_an_entry_of_its_table():
    from kdflow import losses, models

    assert {config.DEFAULTS.loss, config.parse_args("distill", ["--hard_label_weight", "0"]).loss} == set(
        losses.DISTILLATION_LOSSES
    )
    initializers = {recipe.student_initializer(model) for recipe in config.RECIPES.values() for model in config.STUDENT_MODELS}
    assert initializers | set(config.TEACHER_INITIALIZERS) <= set(models.INITIALIZERS)


def test_pyproject_and_conda_name_the_same_dependencies():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    conda_pip = next(item["pip"] for item in conda if isinstance(item, dict))
    assert sorted(pyproject) == sorted(line for line in conda_pip if not line.startswith("-e"))


def test_mlproject_sweep_parameters_mirror_sweep_config():
    import dataclasses

    entry_point = MLPROJECT["entry_points"]["sweep"]
    assert MLPROJECT["entry_points"]["main"] == entry_point  # `mlflow run .` is the default sweep.
    sweep_names = [item.name for item in dataclasses.fields(sweeps.SweepConfig)]
    assert list(entry_point["parameters"]) == sweep_names + list(sweeps.RECIPE_PARAMETERS)
    for name in sweep_names:
        expected = config.to_text(getattr(sweeps.SWEEP_DEFAULTS, name))
        assert str(entry_point["parameters"][name]["default"]) == expected, name
    for name in sweeps.RECIPE_PARAMETERS:
        assert str(entry_point["parameters"][name]["default"]) == config.to_text(getattr(config.DEFAULTS, name)), name
    for name in entry_point["parameters"]:
        assert f"--{name} {{{name}}}" in entry_point["command"]


def test_mlproject_predict_defaults_to_the_champion_student():
    from kdflow import predict

    parameters = MLPROJECT["entry_points"]["predict"]["parameters"]
    assert parameters["model_uri"]["default"] == predict.DEFAULT_MODEL_URI == "models:/kd-student@champion"
    assert parameters["images"]["type"] == "path"  # MLflow makes it absolute: the command runs in the project.


def test_run_names_say_what_was_trained():
    assert runs.run_name("teacher", config.Config(temperature=2, recipe="tuned")) == "teacher-T2-seed12"
    assert runs.run_name("student", config.Config(seed=13)) == "student-seed13"
    assert runs.run_name("distill", config.DEFAULTS) == "distill-T5-seed12"
    fixed = config.Config(temperature=10, teacher_temperature=1, recipe="tuned")
    assert runs.run_name("distill", fixed) == "distill-T10-teacherT1-seed12-tuned"
    hinton = dataclasses.replace(fixed, student_model="mlp", teacher_initializer="he")
    assert runs.run_name("distill", hinton) == "distill-T10-teacherT1-seed12-tuned-mlp-teacher-he"
    assert runs.run_name("teacher", hinton.teacher_config()) == "teacher-T1-seed12-he"
    assert runs.run_name("student", hinton) == "student-seed12-tuned-mlp"
    assert fixed.teacher_config().temperature == 1.0 and config.DEFAULTS.teacher_config().temperature == 5.0
    # A teacher at the distillation's own T is kdtf's default: the same parameters, so reusable.
    assert config.Config(teacher_temperature=5).params("distill") == config.DEFAULTS.params("distill")


def test_recipes_start_each_student_as_they_say():
    import numpy as np

    from kdflow import models, training

    def student_weights(recipe, model):
        training.make_deterministic(12)
        student = models.build_student(model, config.RECIPES[recipe].student_initializer(model))
        return [np.asarray(layer.kernel) for layer in student.layers if hasattr(layer, "kernel")], student.layers[-1].bias

    tuned_softmax, _ = student_weights("tuned", "softmax")
    assert not tuned_softmax[0].any()
    assert 0.9 < student_weights("kdtf", "softmax")[0][0].std() < 1.1  # kdtf's N(0, 1)
    tuned_mlp, last_bias = student_weights("tuned", "mlp")
    assert [kernel.shape for kernel in tuned_mlp] == [(784, 800), (800, 800), (800, 10)]
    # He: the variance of each layer's kernel is 2 / fan-in; the biases start at zero.
    assert [round(kernel.std() * np.sqrt(kernel.shape[0] / 2), 1) for kernel in tuned_mlp] == [1.0, 1.0, 1.0]
    assert not np.asarray(last_bias).any()
    kdtf_mlp, _ = student_weights("kdtf", "mlp")
    assert all(0.9 < kernel.std() < 1.1 for kernel in kdtf_mlp)
