"""The layers of kdflow: every import points down, and the code version covers the training path.

The imports are read from the source with ``ast``, at the top of a module and inside functions
alike: a lazy import that keeps TensorFlow out of a fast-failing path is fine, but it still
counts as a dependency, so none can hide a cycle.
"""

import ast
import graphlib
from pathlib import Path

import pytest

from kdflow import tracking

ROOT = Path(__file__).resolve().parents[1]
# Lowest first: a module may import only from the layers below its own (README, Layout).
LAYERS = (
    ("precision", "data", "quiet"),  # the number format and what "auto" picks; the datasets and .npy files; what the libraries may print: pure
    ("losses", "models"),  # pure: no MLflow, no Ray
    ("variants",),  # every network, loss, initialiser, recipe and dataset by name, each with what the rest needs
    ("config", "training"),  # the parameters; the training loop
    ("tracking", "store"),  # what a run stores, its reuse key and when it is complete; the SQLite file set up
    ("registry",),  # logged models, and the champion alias, which only a complete run's version holds
    ("jobs", "results", "predict", "checks"),  # train; tabulate the tracked runs; answer for image files; check expected cells
    ("cards",),  # a registered student's model card, from its run and its results-table cell
    ("liveness",),  # where each run's process runs, its heartbeat, and ending the runs whose process is gone
    ("runs",),  # one job inside one tracked run
    ("trials",),  # a sweep's runs on Ray Tune: their order, the trainable, their outcomes
    ("experiments",),  # experiment files: the grid, its overrides, the record, the check of expected results
    ("sweeps",),  # many runs over Ray Tune: the plan, reuse, resumption, the sweep's record
    ("cli",),  # the command line of every entry point
)
LAYER = {module: number for number, modules in enumerate(LAYERS) for module in modules}


def kdflow_imports(path: Path) -> set[str]:
    """The kdflow modules a source file imports, anywhere in it."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            if node.module == "kdflow":
                imported |= {f"kdflow.{alias.name}" for alias in node.names}
            else:
                imported.add(node.module)
    return {name.split(".")[1] for name in imported if name.startswith("kdflow.")}


GRAPH = {path.stem: kdflow_imports(path) for path in (ROOT / "kdflow").glob("*.py") if path.stem != "__init__"}


def test_every_module_has_a_layer():
    assert set(GRAPH) == set(LAYER)


def test_imports_point_down_only():
    upward = [
        f"{module} (layer {LAYER[module]}) imports {imported} (layer {LAYER[imported]})"
        for module, imports in sorted(GRAPH.items())
        for imported in sorted(imports)
        if LAYER[imported] >= LAYER[module]
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_import_cycle():
    try:
        tuple(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_entry_points_only_call_the_command_line():
    for path in (ROOT / "entrypoints").glob("*.py"):
        assert kdflow_imports(path) == {"cli"}, path.name


def test_code_version_hashes_the_whole_training_path():
    """The training jobs and everything they import, directly or not, decide what a run trains."""
    training_path, to_visit = set(), ["jobs"]
    while to_visit:
        module = to_visit.pop()
        if module not in training_path:
            training_path.add(module)
            to_visit += GRAPH[module]
    assert training_path == set(tracking.TRAINING_MODULES)
