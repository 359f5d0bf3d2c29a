"""What a run prints: kdflow's own lines, and the libraries' start-up noise only when asked for.

TensorFlow writes its start-up lines (oneDNN, CPU features, "Could not find cuda drivers" and, on
a machine without a GPU, "failed call to cuInit") from C++ straight to the standard error, and
``TF_CPP_MIN_LOG_LEVEL`` no longer silences them (tensorflow/tensorflow#100442); so TensorFlow is
imported, and its devices listed, with file descriptor 2 pointed at /dev/null. MLflow's INFO lines,
and what it says while a job trains (its notes on each registered model and version, its warning
about pickled models), are held back too; kdflow says what matters in its own lines.

``KDFLOW_VERBOSE=1`` in the environment brings all of it back. The teacher runs and the Ray
workers a run starts inherit the environment, so one setting covers a whole sweep.

The same import, verbose or not, keeps Python's garbage collector out of TensorFlow's start-up,
where collections took over a quarter of its time.
"""

import contextlib
import gc
import logging
import os
import sys

VERBOSE_VARIABLE = "KDFLOW_VERBOSE"


def verbose() -> bool:
    """Whether the libraries may print everything they would (``KDFLOW_VERBOSE`` set, and not 0)."""
    return os.environ.get(VERBOSE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def silence_libraries() -> None:
    """Keep MLflow's INFO lines out of this process's output, unless verbose."""
    if not verbose():
        logging.getLogger("mlflow").setLevel(logging.WARNING)


@contextlib.contextmanager
def _standard_error_discarded():
    """File descriptor 2 pointed at /dev/null, for C++ code that writes there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow() -> None:
    """Import TensorFlow and let it find its devices, silently unless verbose; later imports are free.

    Keras' own messages go to absl's log, which shows warnings only: its "Downloading data from"
    line, printed before a download that a machine without internet then refuses, is not
    kdflow's to print (kdflow says which source answered). kdflow's training loop prints its own
    progress, so no Keras progress bar is lost. Errors still surface: an import that fails raises
    once the standard error is back.

    The import makes about 700,000 objects that live as long as the process. Python's collector
    would walk them again and again while they are made (0.8 s of the import's 2.9 s, measured on
    two cores), and at every full collection after: so it pauses for the import, and then leaves
    them, and whatever else the process made before, out of its collections (``gc.freeze``).
    """
    if "tensorflow" not in sys.modules:
        collecting = gc.isenabled()
        gc.disable()
        try:
            with contextlib.nullcontext() if verbose() else _standard_error_discarded():
                import tensorflow as tf

                tf.config.list_physical_devices("GPU")  # Where CUDA's cuInit complains on a machine without a GPU.
        finally:
            gc.freeze()
            if collecting:
                gc.enable()
    import keras

    if not verbose():
        keras.config.disable_interactive_logging()


@contextlib.contextmanager
def mlflow_notes_held():
    """Hold back everything MLflow writes to its log stream (its logger and its notes), unless verbose.

    For a job's span: failures reach the user as exceptions, which kdflow reports itself.
    """
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    if verbose():
        yield
        return
    was_enabled = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = was_enabled
