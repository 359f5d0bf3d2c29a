"""One place defines the parameters: the MLproject, the entry points and the checks agree with it."""

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from kdflow import config, runs

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
        "recipe": "kdtf", "student_model": "softmax", "teacher_model": "cnn", "teacher_initializer": "normal",
        "teacher_temperature": "", "temperature": "5.0", "num_steps": "5000", "batch_size": "128", "learning_rate": "0.001",
        "eval_every": "100", "seed": "12", "dataset": "mnist", "data_dir": "", "teacher": "",
        "teacher_signal": "cached", "loss": "kdtf", "hard_label_weight": "", "dkd_target_weight": "",
        "dkd_non_target_weight": "", "dist_inter_weight": "", "dist_intra_weight": "", "precision": "auto",
    }


@pytest.mark.parametrize(
    "name, text",
    [
        ("temperature", "-1"), ("temperature", "0"), ("temperature", "nan"), ("temperature", "inf"),
        ("num_steps", "0"), ("batch_size", "-3"), ("eval_every", "0"), ("learning_rate", "0"),
        ("dataset", "cifar10"), ("teacher_signal", "sometimes"), ("hard_label_weight", "1.5"), ("seed", "twelve"),
        ("num_steps", "2.5"), ("recipe", "best"), ("teacher_temperature", "-2"),
        ("seed", "-1"), ("seed", str(2**32)), ("batch_size", "55001"), ("precision", "int8"),
        ("student_model", "resnet"), ("teacher_initializer", "zeros"), ("loss", "mse"), ("teacher_model", "softmax"),
        ("student_model", "cnn"),
    ],
)
def test_bad_values_raise_value_error_naming_the_parameter(name, text):
    with pytest.raises(ValueError, match=name):
        config.parse_args("distill", [f"--{name}", text])


def test_parse_args_round_trip():
    made = config.parse_args("distill", ["--temperature", "2", "--loss", "weighted", "--hard_label_weight", "0.5",
                                         "--num_steps", "10"])
    assert (made.temperature, made.hard_label_weight, made.num_steps, made.seed) == (2.0, 0.5, 10, 12)
    assert made.loss == "weighted"
    assert config.parse_args("distill", []) == config.DEFAULTS and config.DEFAULTS.loss == "kdtf"
    assert math.isclose(config.parse_args("teacher", []).learning_rate, 0.001)
    # What goes out as parameters comes back as the same values.
    assert config.parse_args("distill", [f"--{k}={v}" for k, v in made.params("distill").items()]) == made


def test_student_takes_no_temperature():
    with pytest.raises(ValueError, match="unrecognized arguments: --temperature"):
        config.parse_args("student", ["--temperature", "5"])


def test_a_loss_takes_its_own_parameters_and_no_others():
    with pytest.raises(ValueError, match="hard_label_weight is a parameter of loss=weighted, not of loss=kdtf"):
        config.parse_args("distill", ["--hard_label_weight", "0.5"])
    with pytest.raises(ValueError, match="loss=weighted needs hard_label_weight"):
        config.parse_args("distill", ["--loss", "weighted"])
    with pytest.raises(ValueError, match="dist_intra_weight is a parameter of loss=dist, not of loss=dkd"):
        config.parse_args("distill", ["--loss", "dkd", "--dist_intra_weight", "1"])


@pytest.mark.parametrize("name", ["dkd_target_weight", "dkd_non_target_weight", "dist_inter_weight", "dist_intra_weight"])
@pytest.mark.parametrize("text", ["-1", "nan", "inf"])
def test_a_new_loss_weight_must_be_a_finite_number_at_least_zero(name, text):
    loss = name.split("_")[0]
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0, got {text}"):
        config.parse_args("distill", ["--loss", loss, f"--{name}", text])


def test_a_loss_left_empty_takes_its_papers_defaults_and_states_them():
    """DKD's alpha = 1, beta = 8; DIST's beta = gamma = 1. Left empty or given, they are one run:
    the same parameters (and run key), the same name; only another value is named."""
    from kdflow import runs

    dkd = config.parse_args("distill", ["--loss", "dkd"])
    assert (dkd.dkd_target_weight, dkd.dkd_non_target_weight) == (1.0, 8.0)
    assert dkd == config.parse_args("distill", ["--loss", "dkd", "--dkd_target_weight", "1", "--dkd_non_target_weight", "8"])
    assert dkd.params("distill")["dkd_non_target_weight"] == "8.0"
    dist = config.parse_args("distill", ["--loss", "dist"])
    assert (dist.dist_inter_weight, dist.dist_intra_weight) == (1.0, 1.0)
    assert runs.run_name("distill", dkd.resolved()).endswith("-loss=dkd")
    other = config.parse_args("distill", ["--loss", "dkd", "--dkd_non_target_weight", "2"])
    assert runs.run_name("distill", other.resolved()).endswith("-loss=dkd-dkd_non_target_weight=2")


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--seed", "12,13,12"], "seed"), (["--temperature", "2,5,2.0"], "temperature"),
        (["--kinds", "student,student"], "kinds must not repeat"), (["--seed", "-1"], "seed must be an integer from 0"),
        (["--batch_size", "100000"], "batch_size"), (["--resume", "maybe"], "resume"),
        (["--temperatures", "2,5"], "temperatures is now the grid axis temperature"),
    ],
)
def test_bad_sweep_values_are_refused_before_any_cluster(argv, named):
    from kdflow import experiments

    with pytest.raises(ValueError, match=named):
        experiments.parse_args(argv)


def test_the_old_alpha_is_refused_naming_its_replacement():
    from kdflow import experiments

    with pytest.raises(ValueError, match="alpha was renamed hard_label_weight.*alpha=a is hard_label_weight=1-a"):
        config.parse_args("distill", ["--alpha", "0.9"])
    with pytest.raises(ValueError, match="alpha was renamed hard_label_weight"):
        experiments.parse_args(["--alpha", "0.9"])


def test_every_variant_parameter_chooses_from_its_registry():
    from kdflow import variants

    for name, registry in variants.CHOSEN_BY.items():
        assert getattr(config.DEFAULTS, name) in registry, name
    # Every student network starts by a registered initialiser in every recipe.
    for name in variants.networks(variants.STUDENT):
        assert set(variants.NETWORKS[name].recipe_initializers) == set(variants.RECIPES), name
        assert set(variants.NETWORKS[name].recipe_initializers.values()) <= set(variants.INITIALIZERS), name
    assert variants.loss_parameters() <= {field.name for field in dataclasses.fields(config.Config)}


def test_pyproject_and_conda_name_the_same_dependencies():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    conda_pip = next(item["pip"] for item in conda if isinstance(item, dict))
    assert sorted(pyproject) == sorted(line for line in conda_pip if not line.startswith("-e"))


def test_mlproject_sweep_parameters_mirror_the_experiment_parameters():
    from kdflow import experiments

    entry_point = MLPROJECT["entry_points"]["sweep"]
    assert MLPROJECT["entry_points"]["main"] == entry_point  # `mlflow run .` is the default sweep.
    sweep_names = [item.name for item in dataclasses.fields(experiments.SweepConfig)]
    trial_names = [item.name for item in dataclasses.fields(config.Config)]
    assert list(entry_point["parameters"]) == ["experiment"] + sweep_names + trial_names
    assert entry_point["parameters"]["experiment"]["default"] == "experiments/kdtf.yaml"
    # Every other parameter is empty: as the experiment file says, unless given.
    assert all(entry_point["parameters"][name]["default"] == "" for name in sweep_names + trial_names)
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
    assert runs.run_name("distill", fixed) == "distill-T10-seed12-recipe=tuned-teacher_temperature=1"
    hinton = dataclasses.replace(fixed, student_model="mlp", teacher_initializer="he")
    assert runs.run_name("distill", hinton) == (
        "distill-T10-seed12-recipe=tuned-student_model=mlp-teacher_temperature=1-teacher_initializer=he"
    )
    assert runs.run_name("teacher", hinton.teacher_config()) == "teacher-T1-seed12-teacher_initializer=he"
    assert runs.run_name("student", hinton) == "student-seed12-recipe=tuned-student_model=mlp"
    weighted = config.Config(loss="weighted", hard_label_weight=0.5, precision="float32", num_steps=40)
    named = runs.run_name("distill", weighted)
    assert named.startswith("distill-T5-seed12-num_steps=40") and named.endswith("-loss=weighted-hard_label_weight=0.5")
    assert ("precision=float32" in named) == (config.DEFAULTS.resolved().precision != "float32")
    assert fixed.teacher_config().temperature == 1.0 and config.DEFAULTS.teacher_config().temperature == 5.0
    # A teacher at the distillation's own T is kdtf's default: the same parameters, so reusable.
    assert config.Config(teacher_temperature=5).params("distill") == config.DEFAULTS.params("distill")


def test_recipes_start_each_student_as_they_say():
    import numpy as np

    from kdflow import training, variants

    def student_weights(recipe, model):
        training.make_deterministic(12)
        student = variants.build_network(model, config.Config(recipe=recipe, student_model=model).student_initializer(), "float32")
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
