"""The code version that decides reuse: it must follow what the training code computes, and nothing else."""

import shutil

import pytest

from kdflow import tracking


@pytest.fixture
def code_version(tmp_path, monkeypatch):
    """The code version of a copy of kdflow in tmp_path, uncached: a process reads the version once,
    as the code it loaded, and these tests edit the code."""
    shutil.copytree(tracking.PROJECT_ROOT / "kdflow", tmp_path / "kdflow")
    monkeypatch.setattr(tracking, "PROJECT_ROOT", tmp_path)
    return tracking.code_version.__wrapped__


def edited(tmp_path, code_version, module: str, edit) -> str:
    """The code version with one module's source changed by ``edit``, the source then restored."""
    path = tmp_path / "kdflow" / f"{module}.py"
    source = path.read_text()
    changed = edit(source)
    assert changed != source, "the edit must change the file"
    path.write_text(changed)
    try:
        return code_version()
    finally:
        path.write_text(source)


def test_code_version_changes_with_the_training_modules_only(tmp_path, code_version):
    original = code_version()
    assert len(original) == 16

    def add_line(source):
        return source + "\nEDITED = True\n"

    # The command line, sweeps, experiments, run naming, liveness, tables, model cards, prediction and output do
    # not change what a finished run trained (tests/test_layers.py derives the training path from the imports).
    others = {path.stem for path in (tmp_path / "kdflow").glob("*.py")} - set(tracking.TRAINING_MODULES) - {"__init__"}
    assert others == {"cli", "sweeps", "trials", "runs", "liveness", "results", "cards", "predict", "store", "experiments", "checks", "quiet"}
    for module in others:
        assert edited(tmp_path, code_version, module, add_line) == original, module
    for module in tracking.TRAINING_MODULES:
        assert edited(tmp_path, code_version, module, add_line) != original, module
    assert code_version() == original


@pytest.mark.parametrize("module", tracking.TRAINING_MODULES)
def test_comments_docstrings_and_blank_lines_keep_the_code_version(tmp_path, code_version, module):
    original = code_version()

    def explain(source):
        # The module docstring reworded, blank lines, and a comment of its own and one after code.
        source = source.replace('"""', '"""Reworded. ', 1).replace("\nimport ", "\n\n# Why it imports this.\nimport ", 1)
        return source + "\n\n# Said again at the end.\n"

    assert edited(tmp_path, code_version, module, explain) == original


def test_an_edited_expression_changes_the_code_version(tmp_path, code_version):
    original = code_version()
    # A number in a loss, a name in a default: both change what runs.
    assert edited(tmp_path, code_version, "losses", lambda source: source.replace("1e-30", "1e-20")) != original
    assert edited(tmp_path, code_version, "config", lambda source: source.replace('seed: int = 12', 'seed: int = 13')) != original
    # A function's docstring is skipped only where it is a docstring: the same text as a value counts.
    assert edited(tmp_path, code_version, "models", lambda source: source.replace(
        'IMAGE_SHAPE = (28, 28)', 'IMAGE_SHAPE = (28, 28)\nNOTE = "a string that is data"')) != original


def test_a_plugin_module_of_variants_is_part_of_the_code_version(tmp_path, code_version, monkeypatch):
    plugin = tmp_path / "toy_plugin.py"
    plugin.write_text("SCALE = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_plugin  # noqa: F401  (what kdflow.variants imports for KDFLOW_VARIANTS)

    without = code_version()
    monkeypatch.setenv("KDFLOW_VARIANTS", "toy_plugin")
    with_plugin = code_version()
    plugin.write_text("SCALE = 2.0\n")
    assert len({without, with_plugin, code_version()}) == 3
