"""What a run keeps to itself: Keras' own messages, unless KDFLOW_VERBOSE asks for them.

Keras prints "Downloading data from <url>" before it tries a download, and on a machine without
internet that download then fails; kdflow says itself which data source answered.
"""

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
