"""What a run keeps to itself: Keras' own messages, unless KDFLOW_VERBOSE asks for them.

Keras prints "Downloading data from <url>" before it tries a download, and on a machine without
internet that download then fails; kdflow says itself which data source answered.
"""

import json
import subprocess
import sys

import keras
import pytest

from kdflow import quiet

UNREACHABLE = "http://127.0.0.1:9/absent.npz"  # the discard port: nothing listens, the fetch fails at once


@pytest.fixture
def keras_messages(monkeypatch, tmp_path, capsys):
    """What Keras prints on a refused download, from Keras' default of printing; this process's
    setting is put back afterwards (a module that called quiet.import_tensorflow may have set it)."""
    def download() -> str:
        with pytest.raises(Exception, match="URL fetch failure"):
            keras.utils.get_file("absent.npz", origin=UNREACHABLE, cache_dir=str(tmp_path))
        return capsys.readouterr().out

    monkeypatch.delenv(quiet.VERBOSE_VARIABLE, raising=False)
    was_enabled = keras.config.is_interactive_logging_enabled()
    keras.config.enable_interactive_logging()
    yield download
    if not was_enabled:
        keras.config.disable_interactive_logging()


def test_keras_download_line_is_not_printed(keras_messages):
    quiet.import_tensorflow()
    assert "Downloading data from" not in keras_messages()


def test_verbose_keeps_the_keras_download_line(keras_messages, monkeypatch):
    monkeypatch.setenv(quiet.VERBOSE_VARIABLE, "1")
    quiet.import_tensorflow()
    assert f"Downloading data from {UNREACHABLE}" in keras_messages()


@pytest.mark.parametrize("verbose", ["", "1"])
def test_tensorflow_is_imported_without_collections_and_a_command_exits_without_them(verbose, monkeypatch):
    """In a fresh process: no collection runs during the import, and what it made is kept out of
    later ones; the collector stays on; at a command's exit, what it made since is frozen too."""
    monkeypatch.setenv(quiet.VERBOSE_VARIABLE, verbose)
    program = """
import atexit, gc, json, sys
atexit.register(lambda: print(json.dumps({"frozen_at_exit": gc.get_freeze_count()})))  # Runs after kdflow's.
from kdflow import cli, quiet
before = [generation["collections"] for generation in gc.get_stats()]
quiet.import_tensorflow()
after = [generation["collections"] for generation in gc.get_stats()]
code = cli.exit_status("check", lambda: None, uses_store=False)
made_since = [[number] for number in range(10_000)]
print(json.dumps({"collections": [b - a for a, b in zip(before, after)], "frozen": gc.get_freeze_count(),
                  "enabled": gc.isenabled(), "tensorflow": "tensorflow" in sys.modules, "code": code}))
"""
    process = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300, check=True)
    seen, at_exit = (json.loads(line) for line in process.stdout.splitlines()[-2:])
    assert seen == {"collections": [0, 0, 0], "frozen": seen["frozen"], "enabled": True, "tensorflow": True, "code": 0}
    assert seen["frozen"] > 100_000 and at_exit["frozen_at_exit"] > seen["frozen"] + 10_000, (seen, at_exit)
