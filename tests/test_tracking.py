"""The code version that decides reuse: it must follow the training code and nothing else."""

import shutil

from kdflow import tracking


def test_code_version_changes_with_the_training_modules_only(tmp_path, monkeypatch):
    shutil.copytree(tracking.PROJECT_ROOT / "kdflow", tmp_path / "kdflow")
    monkeypatch.setattr(tracking, "PROJECT_ROOT", tmp_path)
    # Uncached: a process reads the version once, as the code it loaded; this test edits the code.
    code_version = tracking.code_version.__wrapped__
    original = code_version()
    assert len(original) == 16

    def edited(module: str) -> str:
        """The code version with one module changed (a comment is enough: it hashes bytes)."""
        path = tmp_path / "kdflow" / f"{module}.py"
        source = path.read_text()
        path.write_text(source + "\n# edited\n")
        try:
            return code_version()
        finally:
            path.write_text(source)

    # The command line, sweeps, run naming, liveness, tables, model cards and prediction do not
    # change what a finished run trained (tests/test_layers.py derives the training path from the imports).
    others = {path.stem for path in (tmp_path / "kdflow").glob("*.py")} - set(tracking.TRAINING_MODULES) - {"__init__"}
    assert others == {"cli", "sweeps", "trials", "runs", "liveness", "results", "cards", "predict", "store"}
    for module in others:
        assert edited(module) == original, module
    for module in tracking.TRAINING_MODULES:
        assert edited(module) != original, module
    assert code_version() == original
