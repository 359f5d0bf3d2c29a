"""Experiment files: a sweep declared in YAML, with the parameters its trials share, its grid and
the results it expects.

`mlflow run . -e sweep -P experiment=experiments/<name>.yaml --env-manager local` runs one, and a
parameter given with -P beside it overrides the file (a comma-separated list is a grid axis).
A grid axis is a parameter's list of values, or a named list of parameter sets, each a mapping of
parameters set together (a teacher with its student, a loss with its weights) whose lists form a
small grid of that set's own. Every value is typed by the path a command line takes (``config.parse_value``), and every point
of the grid is built as a Config before anything trains, so that a mistake is reported with its
file and line rather than as a failed trial an hour in. ``kdflow.checks`` compares the results
tables of a sweep with the cells its file expects.
"""

import dataclasses
import datetime
import itertools
import math
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import mlflow
import yaml
from mlflow.exceptions import MlflowException

from kdflow import config
from kdflow.config import DEFAULTS, KINDS, RENAMED, Config, parse_value, to_text
from kdflow.trials import SCHEDULERS

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
DEFAULT_EXPERIMENT = "experiments/kdtf.yaml"
CHECKS = ("report", "strict")
TOP_LEVEL_KEYS = ("name", "description", "params", "grid", "expected")
MEASURED_KEYS = ("machine", "precision", "wall_time", "commit", "date", "command", "note")
CELL_KEYS = ("row", "temperature", "accuracy", "tolerance", "table", "note")
# The old sweep parameters that became grid axes, each with an example of the new form.
OLD_AXES = {
    "temperatures": ("temperature", "2,5"),
    "seeds": ("seed", "12,13,14"),
    "hard_label_weights": ("hard_label_weight", "0.1,0.5,0.9"),
}
# Where and how a sweep's trials run, not what they train: a recorded experiment leaves them out.
PLACEMENT = ("address", "cpus_per_trial", "gpus_per_trial", "resume")
# How strictly the results are checked changes nothing that trains, so a sweep resumed with
# another check is the same sweep.
NOT_IDENTITY = PLACEMENT + ("check",)


@dataclass(frozen=True)
class SweepConfig:
    kinds: tuple[str, ...] = KINDS  # which kinds of trial to run: teacher, student, distill
    scheduler: str = ""  # "": every trial runs to the end; "asha": ASHA stops weak distillations early
    address: str = ""  # Ray cluster: empty starts a local one; "auto" or "host:port" joins one
    cpus_per_trial: float = 1.0  # CPUs Ray reserves per trial; TensorFlow uses as many threads
    gpus_per_trial: float = 0.0  # GPUs per trial; fractions share a card (memory growth is on)
    resume: bool = False  # continue the newest interrupted sweep with these parameters
    check: str = "report"  # "report": compare with the expected results; "strict": a cell outside or missing fails

    def __post_init__(self):
        unknown = set(self.kinds) - set(KINDS)
        if not self.kinds or unknown:
            raise ValueError(f"kinds must be some of {', '.join(KINDS)}, got {', '.join(self.kinds) or 'none'}")
        if len(set(self.kinds)) != len(self.kinds):
            # A repeated kind would plan its trials twice.
            raise ValueError(f"kinds must not repeat a value, got {to_text(self.kinds)}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be empty or asha, got {self.scheduler!r}")
        if not self.cpus_per_trial > 0:
            raise ValueError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if not self.gpus_per_trial >= 0:
            raise ValueError(f"gpus_per_trial must be >= 0, got {self.gpus_per_trial}")
        if self.check not in CHECKS:
            raise ValueError(f"check must be report or strict, got {self.check!r}")


SWEEP_DEFAULTS = SweepConfig()
# Read from the dataclasses, so that a field added to Config is a parameter here at once.
TRIAL_PARAMETERS = tuple(field.name for field in dataclasses.fields(Config))
SWEEP_PARAMETERS = tuple(field.name for field in dataclasses.fields(SweepConfig))


@dataclass(frozen=True)
class Experiment:
    name: str  # the file's stem, e.g. "kdtf", or the name a recorded experiment.yaml holds
    description: str
    sweep: SweepConfig
    params: dict  # trial parameter -> typed value, only those the file or the overrides give
    grid: dict  # trial parameter -> tuple of typed values, in file order
    expected: dict  # {"measured": {...}, "cells": [...]} as validated; {} when the file has none

    def configs(self) -> list[Config]:
        """The cross product of the grid, its first axis outermost, over the shared parameters.

        Config makes some points equal (a teacher_temperature equal to the temperature is
        kdtf's own run), and each is planned once.
        """
        points = itertools.product(*([(name, value) for value in values] for name, values in self.grid.items()))
        return list(dict.fromkeys(Config(**(self.params | assigned(point))) for point in points))

    def to_yaml(self) -> str:
        """The experiment as resolved, overrides included, in the file format ``load`` reads."""
        sweep = {name: _plain(getattr(self.sweep, name)) for name in SWEEP_PARAMETERS if name not in PLACEMENT}
        document = {
            "name": self.name,
            "description": self.description,
            "params": {name: _plain(value) for name, value in self.params.items()} | sweep,
            "grid": {name: [_plain(value) if name in TRIAL_PARAMETERS else _FlowMapping((k, _plain(v)) for k, v in value)
                            for value in values] for name, values in self.grid.items()},
        }
        if self.expected:
            cells = [{key: value for key, value in cell.items() if value not in ({}, "")} for cell in self.expected["cells"]]
            document["expected"] = {"measured": self.expected["measured"], "cells": cells}
        return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)

    def identity(self) -> dict:
        """What makes two sweeps the same sweep, as canonical text: every trial parameter (the
        defaults included, so that stating a default changes nothing), the grid, the kinds and the
        scheduler. Not where the trials run, nor the description and the expected results."""
        sweep = {name: to_text(getattr(self.sweep, name)) for name in SWEEP_PARAMETERS if name not in NOT_IDENTITY}
        varied = {name for axis, values in self.grid.items() for value in values for name in assignments(axis, value)}
        shared = {
            name: to_text(self.params.get(name, getattr(DEFAULTS, name)))
            for name in TRIAL_PARAMETERS
            if name not in varied
        }
        grid = {name: [to_text(value) if name in TRIAL_PARAMETERS else _point(dict(value), dict(value)) for value in values]
                for name, values in self.grid.items()}
        return sweep | shared | grid


def assignments(axis: str, value) -> dict:
    """What one value of a grid axis sets: ``{axis: value}`` for a parameter's axis, and the
    parameters of the set for an axis of parameter sets (kept as name-value pairs, in file order)."""
    return {axis: value} if axis in TRIAL_PARAMETERS else dict(value)


def assigned(point) -> dict:
    """Every parameter a point of the grid sets, from its (axis, value, ...) entries."""
    return {name: setting for axis, value, *_ in point for name, setting in assignments(axis, value).items()}


class _Dumper(yaml.SafeDumper):
    """Block mappings, and a list of plain values on one line, as the experiment files are written."""


def _represent_list(dumper: yaml.SafeDumper, values: list) -> yaml.Node:
    flow = all(not isinstance(value, (list, dict)) for value in values)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", values, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


class _FlowMapping(dict):
    """One parameter set of a grid axis, written on one line as the experiment files write it."""


_Dumper.add_representer(_FlowMapping, lambda dumper, mapping: dumper.represent_mapping(
    "tag:yaml.org,2002:map", mapping.items(), flow_style=True))


def _plain(value):
    """A typed value as a plain YAML value: a tuple as a list."""
    return list(value) if isinstance(value, tuple) else value


def parse_args(argv: list[str]) -> Experiment:
    """The sweep entry point's command line: ``--experiment`` and an override per parameter.

    Every override defaults to empty, "as the file says". The old names are accepted here only
    to be refused with what to write instead.
    """
    parser = config._Parser(prog="sweep", description="kdflow sweep", allow_abbrev=False)
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    for name in TRIAL_PARAMETERS + SWEEP_PARAMETERS + tuple(OLD_AXES) + tuple(RENAMED):
        parser.add_argument(f"--{name}", default="")
    arguments = vars(parser.parse_args(argv))
    source = arguments.pop("experiment") or DEFAULT_EXPERIMENT
    return load(source, {name: text for name, text in arguments.items() if text != ""})


def load(source: str, overrides: dict[str, str] | None = None) -> Experiment:
    """Read, type and check an experiment file, with ``-P`` overrides applied; ValueError says where."""
    shown, text, stem = _read(source)
    try:
        top = _top_level(shown, text)
        params = _params(top, shown)
        grid = _grid(top, shown, params)
        _override(params, grid, overrides or {}, shown)
        _make_data_dir_absolute(params, grid)
        sweep, shared = _check_plan(params, grid, shown, top)
        return Experiment(
            name=_text(*top["name"]) if "name" in top else stem,
            description=_text(*top["description"]),
            sweep=sweep,
            params=shared,
            grid={name: tuple(value for value, _ in values) for name, values in grid.items()},
            expected=_expected(top["expected"][0], shown) if "expected" in top else {},
        )
    except yaml.MarkedYAMLError as error:  # Invalid syntax, or a value the safe loader refuses (a Python tag).
        mark = error.problem_mark or error.context_mark
        line = f", line {mark.line + 1}" if mark else ""
        raise ValueError(f"{shown}{line}: not valid YAML: {error.problem or error.context}") from None


def _read(source: str) -> tuple[str, str, str]:
    """The experiment's text, with the name its messages show and its file's stem.

    A URI with a scheme (runs:/, mlflow-artifacts:/) is an artifact, such as the experiment.yaml
    a sweep recorded; anything else is a path, here or in the project.
    """
    if len(urllib.parse.urlsplit(source).scheme) > 1:  # One letter is a Windows drive, not a scheme.
        with tempfile.TemporaryDirectory() as folder:
            try:
                path = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=folder))
                return source, path.read_text(encoding="utf-8"), path.stem
            except (MlflowException, OSError) as error:
                raise ValueError(f"experiment: cannot download {source}: {error}") from None
    path = Path(source).expanduser()
    for candidate in (path, ROOT / path):
        if candidate.is_file():
            return source, candidate.read_text(encoding="utf-8"), candidate.stem
    known = ", ".join(f"experiments/{file.name}" for file in sorted(EXPERIMENTS.glob("*.yaml"))) or "none"
    raise ValueError(f"experiment: no file {source} in the current directory or in {ROOT}; the experiment files are: {known}")


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _value(node: yaml.Node):
    """A node's value as ``yaml.safe_load`` makes it: the same SafeLoader constructor."""
    value = yaml.SafeLoader("").construct_object(node, deep=True)
    # A date (2026-12-01) is kept as its text, the same in YAML, JSON and a results table.
    return value.isoformat() if isinstance(value, datetime.date) else value


def _items(node: yaml.Node, shown: str, path: str) -> list[tuple[str, yaml.Node, str]]:
    """A YAML mapping's entries as (key, value node, where), where names the file, line and key."""
    prefix = f"{path}." if path else ""
    if not isinstance(node, yaml.MappingNode):
        raise ValueError(f"{shown}, line {_line(node)}: {path or 'the file'} must be a mapping of name: value")
    items, lines = [], {}
    for key_node, value_node in node.value:
        where = f"{shown}, line {_line(key_node)}: {prefix}{key_node.value}"
        if not isinstance(key_node, yaml.ScalarNode) or not key_node.value:
            raise ValueError(f"{shown}, line {_line(key_node)}: {path or 'the file'} has a key that is not a name")
        if key_node.value in lines:
            raise ValueError(f"{where}: {key_node.value} is given twice (first on line {lines[key_node.value]})")
        lines[key_node.value] = _line(key_node)
        items.append((key_node.value, value_node, where))
    return items


def _top_level(shown: str, text: str) -> dict[str, tuple[yaml.Node, str]]:
    """The file's top-level keys, each with its value node and where it is."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        raise ValueError(f"{shown}: the file is empty; an experiment file is a mapping of {', '.join(TOP_LEVEL_KEYS[1:])}")
    top = {key: (node, where) for key, node, where in _items(root, shown, "")}
    for key, (_, where) in top.items():
        if key not in TOP_LEVEL_KEYS:
            raise ValueError(f"{where}: unknown key {key}; an experiment file has {', '.join(TOP_LEVEL_KEYS[1:])}")
    if "description" not in top:
        raise ValueError(f"{shown}: description is missing: say what the experiment asks and what it found")
    return top


def _text(node: yaml.Node, where: str) -> str:
    value = _value(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a text, got {value!r}")
    return value


def _refuse_name(name: str, where: str, allowed: tuple[str, ...], misplaced: str = "give it in params") -> None:
    """Refuse an old, a misplaced or an unknown parameter name, saying what to write instead."""
    if name in OLD_AXES:
        axis, example = OLD_AXES[name]
        raise ValueError(
            f"{where}: {name} is now the grid axis {axis}: -P {axis}={example} (a comma-separated list is a grid), "
            f"or in the file grid: {{{axis}: [{example.replace(',', ', ')}]}}"
        )
    if name in RENAMED:
        raise ValueError(f"{where}: {RENAMED[name]}")
    if name in SWEEP_PARAMETERS and name not in allowed:
        raise ValueError(f"{where}: {name} is a sweep parameter: {misplaced}")
    if name not in allowed:
        sweep = f"; the sweep parameters are {', '.join(SWEEP_PARAMETERS)}" if SWEEP_PARAMETERS[0] in allowed else ""
        raise ValueError(f"{where}: unknown parameter {name}; the trial parameters are {', '.join(TRIAL_PARAMETERS)}{sweep}")


def _default(name: str):
    return getattr(SWEEP_DEFAULTS if name in SWEEP_PARAMETERS else DEFAULTS, name)


def _typed(name: str, value, where: str):
    """A YAML value as its parameter's type, by the path a command line takes."""
    default = _default(name)
    if value is None and default is not None:
        raise ValueError(f"{where}: {name} cannot be null; leave it out for its default, {to_text(default)!r}")
    if isinstance(value, list) and isinstance(default, tuple):
        value = ",".join(map(to_text, value))
    try:
        return parse_value(name, to_text(value), default)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _one_value(node: yaml.Node, name: str, where: str):
    """The value of a params entry: one scalar, or a list of scalars for a list parameter (kinds)."""
    if isinstance(node, yaml.SequenceNode) and isinstance(_default(name), tuple):
        if all(isinstance(item, yaml.ScalarNode) for item in node.value):
            return _value(node)
    if not isinstance(node, yaml.ScalarNode):
        hint = "; a list of values to sweep belongs in grid" if isinstance(node, yaml.SequenceNode) else ""
        raise ValueError(f"{where} must be one value shared by every trial{hint}")
    return _value(node)


def _params(top: dict, shown: str) -> dict[str, tuple[object, str]]:
    """The params section: name -> (typed value, where)."""
    if "params" not in top:
        return {}
    params = {}
    for name, node, where in _items(top["params"][0], shown, "params"):
        _refuse_name(name, where, TRIAL_PARAMETERS + SWEEP_PARAMETERS)
        params[name] = (_typed(name, _one_value(node, name, where), where), where)
    return params


def _grid(top: dict, shown: str, params: dict) -> dict[str, list[tuple[object, str]]]:
    """The grid section: name -> [(typed value, where), ...]."""
    if "grid" not in top:
        return {}
    grid, set_by = {}, {}  # set_by: parameter -> the axis that sets it
    for name, node, where in _items(top["grid"][0], shown, "grid"):
        is_set_axis = isinstance(node, yaml.SequenceNode) and node.value and all(
            isinstance(item, yaml.MappingNode) for item in node.value)
        if not is_set_axis:
            _refuse_name(name, where, TRIAL_PARAMETERS)
        elif name in TRIAL_PARAMETERS + SWEEP_PARAMETERS:
            raise ValueError(f"{where}: a grid axis of parameter sets needs a name of its own, not the parameter {name}")
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise ValueError(f"{where} must be a non-empty list of values, e.g. [{to_text(_default(name)) or 'null'}]")
        values = []
        for item in node.value:
            item_where = f"{shown}, line {_line(item)}: grid.{name}"
            if is_set_axis:
                values += [(parameter_set, item_where) for parameter_set in _parameter_sets(item, shown, f"grid.{name}")]
            elif not isinstance(item, yaml.ScalarNode):
                raise ValueError(f"{item_where}: each value must be a single value (a number, a name or null), "
                                 "or every value a mapping of parameters set together")
            else:
                values.append((_typed(name, _value(item), item_where), item_where))
        for parameter in dict.fromkeys(key for value, _ in values for key in assignments(name, value)):
            if parameter in params:
                raise ValueError(f"{where}: {parameter} is in params too; give it once: in params one value, in grid a list")
            if parameter in set_by:
                raise ValueError(f"{where}: {parameter} is set by the grid axis {set_by[parameter]} too; give it on one axis")
            set_by[parameter] = name
        grid[name] = _unrepeated(values)
    return grid


def _parameter_sets(node: yaml.Node, shown: str, path: str) -> list[tuple[tuple[str, object], ...]]:
    """The values one mapping of an axis of parameter sets stands for: trial parameters set
    together, as name-value pairs. A list in it is a small grid of that set's own (a temperature
    curve for one student, say), so the mapping stands for the cross product of its lists."""
    choices = []
    for name, value_node, where in _items(node, shown, path):
        _refuse_name(name, where, TRIAL_PARAMETERS)
        if name == "data_dir":
            raise ValueError(f"{where}: data_dir cannot vary over the grid; give one data_dir in params")
        items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        if not items or not all(isinstance(item, yaml.ScalarNode) for item in items):
            raise ValueError(f"{where} must be one value or a non-empty list of values")
        typed = _unrepeated([(_typed(name, _value(item), where), where) for item in items])
        choices.append([(name, value) for value, _ in typed])
    return [tuple(pairs) for pairs in itertools.product(*choices)]


def _unrepeated(values: list[tuple[object, str]]) -> list[tuple[object, str]]:
    """Refuse a value given twice (after typing: 2 and 2.0 are one), which would run its trials twice."""
    seen = set()
    for value, where in values:
        if value in seen:
            raise ValueError(f"{where}: {to_text(value) or 'null'} is repeated; each value of a grid axis is run once")
        seen.add(value)
    return values


def _override(params: dict, grid: dict, overrides: dict[str, str], shown: str) -> None:
    """Apply the ``-P`` parameters: a trial parameter's comma-separated list is a grid axis."""
    for name, text in overrides.items():
        where = f"{shown}: -P {name}={text}"
        _refuse_name(name, where, TRIAL_PARAMETERS + SWEEP_PARAMETERS)
        sets = [axis for axis, values in grid.items() if axis not in TRIAL_PARAMETERS
                and any(name in dict(value) for value, _ in values)]
        if sets:
            raise ValueError(f"{where}: {name} is set by the file's grid axis {sets[0]}, a list of parameter sets; "
                             "edit the file, or copy it, to change it")
        if name in SWEEP_PARAMETERS or "," not in text:
            params[name] = (_typed(name, text, where), where)
            grid.pop(name, None)
        else:
            params.pop(name, None)
            grid[name] = _unrepeated([(_typed(name, item.strip(), where), where) for item in text.split(",")])


def _make_data_dir_absolute(params: dict, grid: dict) -> None:
    """Ray runs each trial in a folder of its own, where a relative path means nothing."""
    def absolute(value):
        return str(Path(value).expanduser().resolve()) if value else value

    if "data_dir" in params:
        value, where = params["data_dir"]
        params["data_dir"] = (absolute(value), where)
    if "data_dir" in grid:
        grid["data_dir"] = [(absolute(value), where) for value, where in grid["data_dir"]]


def _refusal(make, values: dict) -> ValueError | None:
    """The ValueError ``make(**values)`` raises, or None when it accepts them."""
    try:
        make(**values)
    except ValueError as error:
        return error
    return None


def _build(make, located: dict[str, tuple[object, str]], fallback: str):
    """``make(**values)``, or a ValueError at the value to blame: the one whose removal makes the
    rest acceptable, else the one refused on its own for the same reason. When neither tells, the
    values are refused together, at ``fallback``."""
    values = {name: value for name, (value, _) in located.items()}
    try:
        return make(**values)
    except ValueError as refused:
        error = refused
    culprits = [name for name in values if _refusal(make, {k: v for k, v in values.items() if k != name}) is None]
    alone = [name for name in values if str(_refusal(make, {name: values[name]})) == str(error)]
    if len(culprits) == 1 or alone:
        raise ValueError(f"{located[culprits[0] if len(culprits) == 1 else alone[0]][1]}: {error}")
    together = f" (refused together: {_point(values, culprits)})" if culprits else ""
    raise ValueError(f"{fallback}: {error}{together}")


def _point(values: dict, names) -> str:
    return ", ".join(f"{name}={to_text(values[name]) or 'null'}" for name in names)


def _check_plan(params: dict, grid: dict, shown: str, top: dict) -> tuple[SweepConfig, dict]:
    """Build the SweepConfig and every point of the grid as a Config before anything runs, and
    say what is refused; return the SweepConfig and the typed shared trial parameters.

    A shared value may need the grid (loss=weighted needs a hard_label_weight, which the grid
    gives), so values are judged by the points they are in: one that every point refuses is
    reported at its own line, and otherwise the first refused point is named.
    """
    if len(grid.get("data_dir", ())) > 1:
        # Trials that differ only in it would train the same thing under one name.
        raise ValueError(f"{grid['data_dir'][1][1]}: data_dir cannot be a grid axis: it says where the data is, and the "
                         "dataset's digest pins what it is; give one data_dir in params (or grid over dataset)")
    params_where = top["params"][1] if "params" in top else shown
    sweep = _build(SweepConfig, {name: item for name, item in params.items() if name in SWEEP_PARAMETERS}, params_where)
    located = {name: item for name, item in params.items() if name in TRIAL_PARAMETERS}
    shared = {name: value for name, (value, _) in located.items()}
    axes = [[(name, value, where) for value, where in values] for name, values in grid.items()]
    points = list(itertools.product(*axes))
    refusals = [_refusal(Config, shared | assigned(point)) for point in points]
    if all(refusals):
        # Every point is refused: the value to blame, shared or of the grid, is the one whose
        # removal makes the first point acceptable.
        _build(Config, located | {key: (value, where) for name, set_value, where in points[0]
                                  for key, value in assignments(name, set_value).items()}, params_where)
    for name, values in grid.items():
        for value, where in values:
            errors = [error for point, error in zip(points, refusals) if (name, value, where) in point]
            if all(errors):
                raise ValueError(f"{where}: {errors[0]}")
    grid_where = top["grid"][1] if "grid" in top else shown
    for point, error in zip(points, refusals):
        if error:
            values = assigned(point)
            raise ValueError(f"{grid_where}: the grid point {_point(values, values)} is refused: {error}")
    return sweep, shared


def _expected(node: yaml.Node, shown: str) -> dict:
    """The expected section, validated: what was measured, and the cells to compare."""
    expected = {"measured": {}, "cells": []}
    for key, value_node, key_where in _items(node, shown, "expected"):
        if key == "measured":
            expected["measured"] = _measured(value_node, shown)
        elif key == "cells":
            expected["cells"] = _cells(value_node, key_where, shown)
        else:
            raise ValueError(f"{key_where}: unknown key {key}; expected holds measured and cells")
    return expected


def _measured(node: yaml.Node, shown: str) -> dict:
    measured = {}
    for key, value_node, where in _items(node, shown, "expected.measured"):
        if key not in MEASURED_KEYS:
            raise ValueError(f"{where}: unknown key {key}; measured holds {', '.join(MEASURED_KEYS)}")
        value = _value(value_node) if isinstance(value_node, yaml.ScalarNode) else None
        if value is None:
            raise ValueError(f"{where} must be one value (a text or a number)")
        measured[key] = value
    return measured


def _cells(node: yaml.Node, where: str, shown: str) -> list[dict]:
    if not isinstance(node, yaml.SequenceNode):
        raise ValueError(f"{where} must be a list of cells, each a mapping of row, temperature, accuracy and tolerance")
    cells, lines = [], {}
    for item in node.value:
        cell = _cell(item, shown)
        key = (tuple(sorted(cell["table"].items())), cell["row"], cell["temperature"])
        if key in lines:
            raise ValueError(
                f"{shown}, line {_line(item)}: expected.cells: {cell['row']} at T={cell['temperature']:g} "
                f"is expected twice (first on line {lines[key]})"
            )
        lines[key] = _line(item)
        cells.append(cell)
    return cells


def _cell(node: yaml.Node, shown: str) -> dict:
    """One expected cell: row, temperature, accuracy (%) and tolerance (points), numbers as floats."""
    given = {key: (value_node, where) for key, value_node, where in _items(node, shown, "expected.cells")}
    for key, (_, where) in given.items():
        if key not in CELL_KEYS:
            raise ValueError(f"{where}: unknown key {key}; a cell has {', '.join(CELL_KEYS)}")
    for key in CELL_KEYS[:4]:
        if key not in given:
            raise ValueError(f"{shown}, line {_line(node)}: expected.cells: the cell has no {key}")
    return {
        "row": _text(*given["row"]),
        "temperature": _number(*given["temperature"], lambda x: x > 0, "a finite number > 0"),
        "accuracy": _number(*given["accuracy"], lambda x: 0 <= x <= 100, "a percentage from 0 to 100"),
        "tolerance": _number(*given["tolerance"], lambda x: x >= 0, "a number >= 0 (percentage points)"),
        "table": _selector(given["table"][0], shown) if "table" in given else {},
        "note": _text(*given["note"]) if "note" in given else "",
    }


def _number(node: yaml.Node, where: str, accepts, description: str) -> float:
    value = _value(node) if isinstance(node, yaml.ScalarNode) else None
    # A bool is an int to Python, never a number here.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not accepts(value):
        raise ValueError(f"{where} must be {description}, got {value!r}")
    return float(value)


def _selector(node: yaml.Node, shown: str) -> dict[str, str]:
    """A cell's table selector: trial parameter -> canonical text, as a table's identity holds it."""
    selector = {}
    for name, value_node, item_where in _items(node, shown, "expected.cells.table"):
        _refuse_name(name, item_where, TRIAL_PARAMETERS, "a table is selected by trial parameters")
        if not isinstance(value_node, yaml.ScalarNode):
            raise ValueError(f"{item_where} must be one value")
        selector[name] = to_text(_typed(name, _value(value_node), item_where))
    return selector
