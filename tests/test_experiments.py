"""Experiment files: every file in experiments/ plans and round-trips, every mistake is reported
with its file and line before anything runs, -P overrides replace the file, and expected cells
are checked against results tables (stand-ins here: nothing trains, no server starts)."""

import dataclasses
import json
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest

from kdflow import checks, experiments
from kdflow.config import DEFAULTS, Config
from kdflow.experiments import ROOT, SweepConfig

FILES = sorted((ROOT / "experiments").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def refusal(source: str, overrides: dict | None = None) -> str:
    with pytest.raises(ValueError) as caught:
        experiments.load(source, overrides or {})
    return str(caught.value)


# --- The experiment files -------------------------------------------------------------------------


def test_the_experiment_files_are_all_there():
    assert {path.stem for path in FILES} >= {
        "kdtf", "temperature-curve", "tuned-student", "hinton-mlp", "asha-grid", "precision"
    }


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.stem)
def test_every_experiment_file_loads_plans_and_round_trips(path, tmp_path):
    experiment = experiments.load(f"experiments/{path.name}", {})
    assert experiment.name == path.stem
    assert experiment.description.strip()
    configs = experiment.configs()
    assert configs and all(isinstance(config, Config) for config in configs)
    assert len(set(configs)) == len(configs)
    assert experiment.expected["cells"], "each file says what it expects"
    again = experiments.load(write(tmp_path, experiment.to_yaml(), "experiment.yaml"), {})
    assert again.name == experiment.name
    assert again.configs() == configs
    assert again.sweep == experiment.sweep
    assert again.expected == experiment.expected
    assert again.identity() == experiment.identity()
    json.dumps(experiment.identity())


def test_kdtf_plans_its_table_first_grid_key_outermost():
    experiment = experiments.load("experiments/kdtf.yaml", {})
    assert experiment.params == {}
    assert experiment.grid == {"temperature": (2.0, 5.0), "seed": (12, 13, 14)}
    assert [(config.temperature, config.seed) for config in experiment.configs()] == [
        (2.0, 12), (2.0, 13), (2.0, 14), (5.0, 12), (5.0, 13), (5.0, 14)
    ]
    assert all(dataclasses.replace(config, temperature=5.0, seed=12) == DEFAULTS for config in experiment.configs())
    assert experiment.sweep == SweepConfig()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", experiment.expected["measured"]["date"])  # Kept as written, a string.
    assert experiment.expected["cells"][0] == {
        "row": "Teacher", "temperature": 2.0, "accuracy": 98.09, "tolerance": 0.3, "table": {}, "note": ""
    }


def test_a_point_config_makes_equal_is_planned_once():
    # teacher_temperature=5 at T=5 is kdtf's own run, the same as teacher_temperature=null there.
    experiment = experiments.load("experiments/temperature-curve.yaml", {})
    assert len(experiment.configs()) == 6 * 2 * 3 - 3


def test_the_asha_grid_shares_a_weighted_loss_and_sweeps_its_weight():
    experiment = experiments.load("experiments/asha-grid.yaml", {})
    assert experiment.sweep.kinds == ("teacher", "distill") and experiment.sweep.scheduler == "asha"
    assert experiment.params["loss"] == "weighted"
    assert {config.hard_label_weight for config in experiment.configs()} == {0.1, 0.3, 0.5, 0.7, 0.9}


def test_precision_cells_select_their_table_by_canonical_text():
    cells = experiments.load("experiments/precision.yaml", {}).expected["cells"]
    assert {json.dumps(cell["table"]) for cell in cells} == {'{"precision": "float32"}', '{"precision": "bfloat16"}'}


def test_to_yaml_keeps_what_the_sweep_is_not_where_it_runs(tmp_path):
    experiment = experiments.load("experiments/kdtf.yaml", {"address": "auto", "resume": "true", "check": "strict"})
    text = experiment.to_yaml()
    assert "address" not in text and "resume" not in text and "cpus_per_trial" not in text
    again = experiments.load(write(tmp_path, text, "experiment.yaml"), {})
    assert again.sweep == SweepConfig(check="strict")


def test_identity_is_what_trains():
    plain = experiments.load("experiments/kdtf.yaml", {})
    elsewhere = experiments.load("experiments/kdtf.yaml", {"address": "auto", "cpus_per_trial": "2", "check": "strict"})
    stated_default = experiments.load("experiments/kdtf.yaml", {"recipe": "kdtf"})
    assert plain.identity() == elsewhere.identity() == stated_default.identity()
    assert plain.identity()["temperature"] == ["2.0", "5.0"]
    assert experiments.load("experiments/kdtf.yaml", {"seed": "12"}).identity() != plain.identity()


def test_a_recorded_experiment_keeps_its_name(tmp_path):
    experiment = experiments.load("experiments/hinton-mlp.yaml", {"seed": "12"})
    again = experiments.load(write(tmp_path, experiment.to_yaml(), "experiment.yaml"), {})
    assert again.name == "hinton-mlp"
    assert again.params["seed"] == 12 and "seed" not in again.grid


def test_a_logged_experiment_loads_from_its_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    experiment = experiments.load("experiments/asha-grid.yaml", {"num_steps": "40"})
    with mlflow.start_run() as run:
        mlflow.log_text(experiment.to_yaml(), "experiment.yaml")
    again = experiments.load(f"runs:/{run.info.run_id}/experiment.yaml", {})
    assert again.name == "asha-grid"
    assert again.configs() == experiment.configs()
    assert "cannot download" in refusal(f"runs:/{run.info.run_id}/nothing.yaml")


def test_a_missing_file_names_the_experiment_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = refusal("experiments/nope.yaml")
    assert "no file experiments/nope.yaml" in message and "experiments/kdtf.yaml" in message


def test_a_path_is_found_here_first_then_in_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert experiments.load("experiments/kdtf.yaml", {}).name == "kdtf"
    (tmp_path / "experiments").mkdir()
    write(tmp_path, "description: a local one\ngrid: {seed: [1]}\n", "experiments/kdtf.yaml")
    assert experiments.load("experiments/kdtf.yaml", {}).grid == {"seed": (1,)}


# --- Mistakes, each with its file and line ----------------------------------------------------------


@pytest.mark.parametrize("text, line, says", [
    ("description: x\ngrid:\n  temperature: [2, 5\n  seed: [12]\n", 4, "not valid YAML"),
    ("- description\n- grid\n", 1, "the file must be a mapping"),
    ("description: x\nparams: {}\nseeds_grid: 1\n", 3, "unknown key seeds_grid; an experiment file has"),
    ("description: x\ndescription: y\n", 2, "description is given twice (first on line 1)"),
    ("description: [x]\n", 1, "description must be a text"),
    ("description: x\nparams:\n  temprature: 2\n", 3, "params.temprature: unknown parameter temprature; the trial parameters are recipe"),
    ("description: x\ngrid:\n  temperature:\n    - 2\n    - -1\n", 5,
     "grid.temperature: temperature must be a finite number > 0, got -1.0"),
    ("description: x\nparams:\n  num_steps: many\n", 3, "params.num_steps: num_steps must be a int, got 'many'"),
    ("description: x\nparams:\n  temperature: true\n", 3, "params.temperature: temperature must be a float, got 'True'"),
    ("description: x\nparams:\n  seed: 12.5\n", 3, "params.seed: seed must be a int, got '12.5'"),
    ("description: x\nparams:\n  temperature: null\n", 3, "params.temperature: temperature cannot be null"),
    ("description: x\nparams:\n  resume: maybe\n", 3, "params.resume: resume must be true or false, got 'maybe'"),
    ("description: x\nparams:\n  temperature: [2, 5]\n", 3, "params.temperature must be one value shared by every trial; a list"),
    ("description: x\nparams:\n  check: lenient\n", 3, "params.check: check must be report or strict, got 'lenient'"),
    ("description: x\nparams:\n  kinds: [teacher, teacher]\n", 3, "kinds must not repeat a value"),
    ("description: x\nparams:\n  batch_size: 0\n", 3, "params.batch_size: batch_size must be at least 1, got 0"),
    ("description: x\ngrid:\n  temperature: [2, 5, 2.0]\n", 3, "grid.temperature: 2.0 is repeated"),
    ("description: x\ngrid:\n  temperature: []\n", 3, "grid.temperature must be a non-empty list of values, e.g. [5.0]"),
    ("description: x\ngrid:\n  temperature: 2\n", 3, "grid.temperature must be a non-empty list of values"),
    ("description: x\ngrid:\n  temperature:\n    - [2, 5]\n", 4, "grid.temperature: each value must be a single value"),
    ("description: x\ngrid:\n  kinds: [teacher, distill]\n", 3, "grid.kinds: kinds is a sweep parameter: give it in params"),
    ("description: x\nparams:\n  seed: 12\ngrid:\n  seed: [12, 13]\n", 5, "grid.seed: seed is in params too"),
    ("description: x\ngrid:\n  temperatures: [2, 5]\n", 3,
     "grid.temperatures: temperatures is now the grid axis temperature: -P temperature=2,5 (a comma-separated list is a grid)"),
    ("description: x\nparams:\n  seeds: 12\n", 3, "seeds is now the grid axis seed: -P seed=12,13,14"),
    ("description: x\nparams:\n  hard_label_weights: 0.5\n", 3, "hard_label_weights is now the grid axis hard_label_weight"),
    ("description: x\nparams:\n  alpha: 0.5\n", 3, "alpha was renamed hard_label_weight"),
    ("description: x\ngrid:\n  data_dir:\n    - /a\n    - /b\n", 5, "grid.data_dir: data_dir cannot be a grid axis"),
    # A loss that refuses a parameter: the one value whose removal makes the rest acceptable is blamed.
    ("description: x\ngrid:\n  hard_label_weight: [0.5]\n", 3,
     "grid.hard_label_weight: hard_label_weight is a parameter of loss=weighted, not of loss=kdtf"),
    ("description: x\nparams:\n  loss: weighted\n", 3, "params.loss: loss=weighted needs hard_label_weight"),
    # Axes of parameter sets.
    ("description: x\ngrid:\n  loss:\n    - {loss: dkd}\n", 3, "grid.loss: a grid axis of parameter sets needs a name of its own"),
    ("description: x\ngrid:\n  method:\n    - {loss: dkd, speed: 2}\n", 4, "grid.method.speed: unknown parameter speed"),
    ("description: x\ngrid:\n  method:\n    - {loss: dkd, temperature: [[2]]}\n", 4,
     "grid.method.temperature must be one value or a non-empty list of values"),
    ("description: x\nparams:\n  loss: dkd\ngrid:\n  method:\n    - {loss: dist}\n", 5, "grid.method: loss is in params too"),
    ("description: x\ngrid:\n  seed: [12]\n  pair:\n    - {seed: 13}\n", 4, "grid.pair: seed is set by the grid axis seed too"),
    ("description: x\ngrid:\n  method:\n    - {loss: dkd, dkd_target_weight: -1}\n", 4,
     "grid.method: dkd_target_weight must be a finite number >= 0, got -1.0"),
    ("description: x\ngrid:\n  pair:\n    - {data_dir: /a}\n", 4, "grid.pair.data_dir: data_dir cannot vary over the grid"),
    ("description: x\nexpected:\n  cells: []\n  wanted: 1\n", 4, "expected.wanted: unknown key wanted"),
    ("description: x\nexpected:\n  measured: {machine: here, speed: fast}\n", 3, "expected.measured.speed: unknown key speed"),
    ("description: x\nexpected:\n  measured:\n    machine: [a, b]\n", 4, "expected.measured.machine must be one value"),
    ("description: x\nexpected:\n  cells: {row: Teacher}\n", 3, "expected.cells must be a list of cells"),
    ("description: x\nexpected:\n  cells:\n    - {row: Teacher, temperature: 2, accuracy: 98, tolerance: 0.3, seed: 12}\n", 4,
     "expected.cells.seed: unknown key seed; a cell has row"),
    ("description: x\nexpected:\n  cells:\n    - {temperature: 2, accuracy: 98, tolerance: 0.3}\n", 4, "the cell has no row"),
    ("description: x\nexpected:\n  cells:\n    - {row: Teacher, temperature: 2, accuracy: 98, tolerance: -0.1}\n", 4,
     "expected.cells.tolerance must be a number >= 0 (percentage points), got -0.1"),
    ("description: x\nexpected:\n  cells:\n    - {row: Teacher, temperature: 2, accuracy: high, tolerance: 1}\n", 4,
     "expected.cells.accuracy must be a percentage from 0 to 100, got 'high'"),
    ("description: x\nexpected:\n  cells:\n    - {row: Teacher, temperature: .inf, accuracy: 98, tolerance: 1}\n", 4,
     "expected.cells.temperature must be a finite number > 0"),
    ("description: x\nexpected:\n  cells:\n    - {row: T, temperature: 2, accuracy: 98, tolerance: 1, table: {kinds: teacher}}\n", 4,
     "expected.cells.table.kinds: kinds is a sweep parameter: a table is selected by trial parameters"),
    ("description: x\nexpected:\n  cells:\n    - {row: T, temperature: 2, accuracy: 98, tolerance: 1, table: {temperature: hot}}\n", 4,
     "expected.cells.table.temperature: temperature must be a float, got 'hot'"),
    ("description: x\nexpected:\n  cells:\n    - {row: T, temperature: 2, accuracy: 98, tolerance: 1}\n"
     "    - {row: T, temperature: 2.0, accuracy: 97, tolerance: 1}\n", 5, "T at T=2 is expected twice (first on line 4)"),
])
def test_a_mistake_names_its_file_key_and_line(tmp_path, text, line, says):
    source = write(tmp_path, text)
    message = refusal(source)
    assert message.startswith(f"{source}, line {line}: "), message
    assert says in message, message


def test_of_two_refused_values_the_one_config_reports_is_blamed(tmp_path):
    source = write(tmp_path, "description: x\nparams:\n  batch_size: 0\n  temperature: -1\n")
    assert refusal(source).startswith(f"{source}, line 4: params.temperature: temperature must be a finite number > 0")


def test_a_python_tag_is_refused_by_the_safe_loader(tmp_path):
    message = refusal(write(tmp_path, "description: x\nparams:\n  recipe: !!python/object:os.system x\n"))
    assert ", line 3: not valid YAML: could not determine a constructor" in message


def test_an_empty_or_undescribed_file_is_refused(tmp_path):
    assert "the file is empty" in refusal(write(tmp_path, ""))
    assert "description is missing" in refusal(write(tmp_path, "grid: {seed: [12]}\n"))


def test_a_refused_point_of_the_grid_is_named(tmp_path):
    # Each value is accepted at some point of the grid; two points are refused.
    source = write(tmp_path, """\
        description: x
        grid:
          loss: [kdtf, weighted]
          hard_label_weight: [null, 0.5]
        """)
    message = refusal(source)
    assert message.startswith(f"{source}, line 2: grid: the grid point loss=kdtf, hard_label_weight=0.5 is refused: ")
    assert "hard_label_weight is a parameter of loss=weighted" in message


def test_an_axis_of_parameter_sets_varies_them_together_each_with_a_grid_of_its_own(tmp_path):
    """Two teacher-student pairs, each over its own temperatures, crossed with losses that take
    different parameters: no point sets a loss's weight for another loss, and -P cannot change a
    parameter that a set holds."""
    source = write(tmp_path, """\
        description: x
        grid:
          pair:
            - {student_model: softmax, temperature: [1, 5]}
            - {student_model: mlp, recipe: tuned, temperature: [1, 20]}
          method:
            - {loss: kdtf}
            - {loss: weighted, hard_label_weight: 0.5}
          seed: [12, 13]
        """)
    experiment = experiments.load(source, {})
    points = {(config.student_model, config.recipe, config.temperature, config.loss, config.hard_label_weight, config.seed)
              for config in experiment.configs()}
    assert len(points) == len(experiment.configs()) == 16
    assert ("mlp", "tuned", 20.0, "weighted", 0.5, 13) in points and ("softmax", "kdtf", 5.0, "kdtf", None, 12) in points
    assert not any(student == "softmax" and temperature == 20.0 for student, _, temperature, *_ in points)
    assert experiment.identity()["method"] == ["loss=kdtf", "loss=weighted, hard_label_weight=0.5"]
    assert "recipe" not in experiment.identity() and experiment.identity()["seed"] == ["12", "13"]
    assert "temperature is set by the file's grid axis pair" in refusal(source, {"temperature": "2"})
    assert {config.seed for config in experiments.load(source, {"seed": "14"}).configs()} == {14}


def test_a_null_is_the_empty_value_of_a_parameter_whose_default_is_none(tmp_path):
    experiment = experiments.load(write(tmp_path, "description: x\ngrid:\n  teacher_temperature: [null, 1]\n"), {})
    assert experiment.grid == {"teacher_temperature": (None, 1.0)}


# --- Overrides ----------------------------------------------------------------------------------


def test_a_comma_separated_override_is_a_grid_axis():
    experiment = experiments.load("experiments/kdtf.yaml", {"num_steps": "100,200", "temperature": "1,3"})
    assert experiment.grid == {"temperature": (1.0, 3.0), "seed": (12, 13, 14), "num_steps": (100, 200)}
    assert len(experiment.configs()) == 2 * 3 * 2


def test_a_comma_separated_override_replaces_a_shared_value():
    experiment = experiments.load("experiments/hinton-mlp.yaml", {"teacher_temperature": "1,5"})
    assert "teacher_temperature" not in experiment.params
    assert experiment.grid["teacher_temperature"] == (1.0, 5.0)


def test_a_single_override_replaces_a_grid_axis_or_a_shared_value():
    experiment = experiments.load("experiments/tuned-student.yaml", {"temperature": "3", "recipe": "kdtf"})
    assert experiment.params == {"temperature": 3.0, "recipe": "kdtf"}
    assert experiment.grid == {"seed": (12, 13, 14)}
    assert {config.temperature for config in experiment.configs()} == {3.0}


def test_a_sweep_parameter_override_replaces_the_file():
    experiment = experiments.load("experiments/asha-grid.yaml", {
        "kinds": "distill", "scheduler": "", "check": "strict", "cpus_per_trial": "2", "resume": "true"
    })
    assert experiment.sweep == SweepConfig(kinds=("distill",), scheduler="", check="strict", cpus_per_trial=2.0, resume=True)


def test_an_override_the_plan_refuses_names_itself(tmp_path):
    source = str(ROOT / "experiments" / "kdtf.yaml")
    assert refusal(source, {"temperature": "-1"}).startswith(f"{source}: -P temperature=-1: temperature must be")
    assert refusal(source, {"seed": "12,12"}).startswith(f"{source}: -P seed=12,12: 12 is repeated")
    assert "unknown parameter colour" in refusal(source, {"colour": "red"})
    assert "scheduler must be empty or asha" in refusal(source, {"scheduler": "hyperband"})


def test_an_override_with_the_weighted_loss_makes_the_weight_acceptable(tmp_path):
    source = write(tmp_path, "description: x\ngrid:\n  hard_label_weight: [0.1, 0.5]\n")
    assert "loss=kdtf" in refusal(source)
    assert len(experiments.load(source, {"loss": "weighted"}).configs()) == 2


@pytest.mark.parametrize("old, new", [("temperatures", "temperature"), ("seeds", "seed"), ("hard_label_weights", "hard_label_weight")])
def test_the_old_sweep_parameters_are_refused_with_their_grid_axis(old, new):
    message = refusal("experiments/kdtf.yaml", {old: "2,5"})
    assert f"{old} is now the grid axis {new}: -P {new}=" in message
    assert "(a comma-separated list is a grid)" in message


def test_a_renamed_parameter_is_refused_as_an_override():
    assert "alpha was renamed hard_label_weight" in refusal("experiments/kdtf.yaml", {"alpha": "0.5"})


def test_data_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment = experiments.load("experiments/kdtf.yaml", {"data_dir": "data"})
    assert experiment.params["data_dir"] == str(tmp_path / "data")


# --- The command line -------------------------------------------------------------------------------


def test_parse_args_defaults_to_kdtf_and_drops_empty_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert experiments.parse_args([]) == experiments.load("experiments/kdtf.yaml", {})
    experiment = experiments.parse_args([
        "--experiment", "experiments/asha-grid.yaml", "--seed", "12,13", "--temperature", "", "--address", "",
    ])
    assert experiment.name == "asha-grid"
    assert experiment.grid["seed"] == (12, 13) and experiment.grid["temperature"] == (1.0, 2.0, 5.0, 10.0, 20.0)


@pytest.mark.parametrize("argv, says", [
    (["--temperatures", "2,5"], "temperatures is now the grid axis temperature"),
    (["--alpha", "0.5"], "alpha was renamed"),
    (["--data_dir", "/a,/b"], "data_dir cannot be a grid axis"),
    (["--colour", "red"], "unrecognized arguments"),
    (["--temp", "5"], "unrecognized arguments"),  # No abbreviations: --temp could be temperature or temperatures.
])
def test_parse_args_refuses_a_bad_command_line(argv, says):
    with pytest.raises(ValueError, match=says):
        experiments.parse_args(argv)


def test_every_trial_and_sweep_parameter_is_an_option():
    fields = [item.name for item in dataclasses.fields(Config)] + [item.name for item in dataclasses.fields(SweepConfig)]
    assert set(fields) <= set(experiments.TRIAL_PARAMETERS + experiments.SWEEP_PARAMETERS)
    argv = [arg for name in ("loss", "teacher_model", "check") for arg in (f"--{name}", "")]
    experiments.parse_args(argv)


@pytest.mark.parametrize("values, says", [
    ({"kinds": ("teacher", "pupil")}, "kinds must be some of"),
    ({"kinds": ()}, "kinds must be some of"),
    ({"kinds": ("distill", "distill")}, "kinds must not repeat"),
    ({"scheduler": "pbt"}, "scheduler must be empty or asha"),
    ({"cpus_per_trial": 0.0}, "cpus_per_trial must be > 0"),
    ({"gpus_per_trial": -1.0}, "gpus_per_trial must be >= 0"),
    ({"check": "loose"}, "check must be report or strict"),
])
def test_sweep_config_refuses_bad_values(values, says):
    with pytest.raises(ValueError, match=says):
        SweepConfig(**values)


# --- The check of expected results --------------------------------------------------------------------


@dataclass(frozen=True)
class StandInCell:
    mean: float
    std: float | None
    n: int
    run_ids: tuple[str, ...]


@dataclass
class StandInTable:
    """What check relies on of a results.Table: its identity, its label and its cells."""
    label: str
    identity: dict
    cells: dict = field(default_factory=dict)  # (row, temperature) -> StandInCell

    def cell(self, row: str, temperature: float):
        return self.cells.get((row, temperature))


def expected_cells(*cells: dict) -> dict:
    defaults = {"table": {}, "note": ""}
    return {"measured": {}, "cells": [defaults | cell for cell in cells]}


def table(label: str, cells: dict, **identity) -> StandInTable:
    identity = {"recipe": "kdtf", "student_model": "softmax", "precision": "float32"} | identity
    return StandInTable(label, identity, {key: StandInCell(mean, 0.1, 3, ("a", "b", "c")) for key, mean in cells.items()})


FLOAT32 = table("kdtf float32", {("Teacher", 2.0): 98.10, ("Distillation", 5.0): 90.0})
BFLOAT16 = table("kdtf bfloat16", {("Teacher", 2.0): 98.50}, precision="bfloat16")


def test_check_within_and_outside():
    expected = expected_cells(
        {"row": "Teacher", "temperature": 2.0, "accuracy": 98.09, "tolerance": 0.3},
        {"row": "Distillation", "temperature": 5.0, "accuracy": 90.80, "tolerance": 0.3},
    )
    result = checks.check(expected, [FLOAT32])
    assert [cell.status for cell in result.cells] == ["within", "outside"]
    assert result.counts == {"within": 1, "outside": 1, "missing": 0}
    assert result.line() == "check: 1 within, 1 outside, 0 missing of 2 expected cells"
    assert result.tag() == "failed: 1 outside"
    assert not result.passed and result.fails("strict") and not result.fails("report")
    assert result.cells[1].difference == pytest.approx(-0.8)


def test_a_difference_equal_to_the_tolerance_is_within():
    expected = expected_cells({"row": "Teacher", "temperature": 2.0, "accuracy": 98.4, "tolerance": 0.3})
    assert checks.check(expected, [FLOAT32]).cells[0].status == "within"


def test_check_missing_row_no_table_and_ambiguous_selector():
    expected = expected_cells(
        {"row": "Student only", "temperature": 2.0, "accuracy": 88.67, "tolerance": 0.4},
        {"row": "Teacher", "temperature": 2.0, "accuracy": 98.09, "tolerance": 0.3, "table": {"precision": "float16"}},
        {"row": "Teacher", "temperature": 2.0, "accuracy": 98.09, "tolerance": 0.3, "table": {"recipe": "kdtf"}},
        {"row": "Teacher", "temperature": 2.0, "accuracy": 98.40, "tolerance": 0.3, "table": {"precision": "bfloat16"}},
    )
    result = checks.check(expected, [FLOAT32, BFLOAT16])
    statuses = [cell.status for cell in result.cells]
    assert statuses == ["missing", "missing", "missing", "within"]
    no_selector, no_table, ambiguous, found = result.cells
    assert "ambiguous" in no_selector.reason and "kdtf float32" in no_selector.reason
    assert no_table.reason == "no table matched precision=float16"
    assert "the selector recipe=kdtf is ambiguous" in ambiguous.reason
    assert "kdtf float32" in ambiguous.reason and "kdtf bfloat16" in ambiguous.reason
    assert found.table == "kdtf bfloat16"
    assert result.tag() == "incomplete: 3 missing"
    assert not result.passed and result.fails("strict")

    only_float32 = checks.check(expected_cells(expected["cells"][0]), [FLOAT32]).cells[0]
    assert only_float32.status == "missing" and "no cell Student only at T=2" in only_float32.reason
    assert checks.check(expected_cells(expected["cells"][0]), []).cells[0].reason == "there is no results table"


def test_check_passes_when_every_cell_is_within():
    expected = experiments.load("experiments/precision.yaml", {}).expected
    float32 = {(c["row"], c["temperature"]): c["accuracy"] + 0.1 for c in expected["cells"] if c["table"]["precision"] == "float32"}
    bfloat16 = {(c["row"], c["temperature"]): c["accuracy"] - 0.1 for c in expected["cells"] if c["table"]["precision"] == "bfloat16"}
    result = checks.check(expected, [table("f", float32), table("b", bfloat16, precision="bfloat16")])
    assert result.passed and not result.fails("strict")
    assert result.tag() == "passed"
    assert result.line() == "check: 10 within, 0 outside, 0 missing of 10 expected cells"


def test_check_with_nothing_expected():
    result = checks.check({}, [FLOAT32])
    assert result.line() == "check: no expected results, nothing to check"
    assert result.tag() == "none" and result.passed and not result.fails("strict")


def test_check_markdown_shows_each_cell():
    expected = expected_cells(
        {"row": "Teacher", "temperature": 2.0, "accuracy": 98.09, "tolerance": 0.3},
        {"row": "Teacher", "temperature": 10.0, "accuracy": 98.0, "tolerance": 0.3},
    )
    lines = checks.check(expected, [FLOAT32]).markdown().splitlines()
    assert lines[0] == "| table | row | T | expected (%) | measured (%) | difference | status | runs |"
    assert lines[2] == "| kdtf float32 | Teacher | 2 | 98.09 ± 0.3 | 98.10 ± 0.10 (3) | +0.01 | within | a, b, c |"
    assert lines[3].startswith("| kdtf float32 | Teacher | 10 | 98.00 ± 0.3 | — | — | missing: the table has no cell")


def test_a_bad_file_exits_2_from_the_sweep_entry_point_before_any_cluster(tmp_path):
    import subprocess
    import sys
    import time

    bad = tmp_path / "bad.yaml"
    bad.write_text("description: a grid of one refused value\ngrid:\n  temperature: [2, -1]\n")
    started = time.monotonic()
    process = subprocess.run([sys.executable, str(ROOT / "entrypoints" / "sweep.py"), "--experiment", str(bad)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert process.returncode == 2
    assert f"kdflow sweep: error: {bad}, line 3: grid.temperature: temperature must be a finite number > 0" in process.stderr
    assert "Started a local Ray instance" not in process.stderr and time.monotonic() - started < 120
