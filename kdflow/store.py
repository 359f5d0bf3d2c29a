"""The single-machine store, a SQLite file, made safe for runs side by side before any run starts.

MLflow's default store is one SQLite file, ``sqlite:///mlflow.db``. Every process that opens a
file with no tables creates MLflow's schema itself, so commands started together on a new file
all run MLflow's migrations at once and nearly all of them fail ("table ... already exists",
"duplicate column name"). Here one process at a time, holding a lock file, creates the schema
through MLflow while the others wait.

The file is also put in write-ahead-log (WAL) mode, which is stored in the file, so every process
and every later command uses it. Then a reader that keeps its snapshot open (a notebook, a long
query of the UI) no longer blocks writers, and a writer waiting to commit no longer blocks
processes opening the store; in the default rollback-journal mode those waits end in "database
is locked". Writers still take turns, within MLflow's busy timeout (20 s a session). Other stores
are left as they are: several machines cannot share a SQLite file and need a tracking server.
"""

import contextlib
import hashlib
import os
import sqlite3
import tempfile
from pathlib import Path

import mlflow
from sqlalchemy.engine import make_url

try:
    import fcntl
except ImportError:  # Windows: the setting up runs unguarded there, as MLflow's own does.
    fcntl = None


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` tracking URI; None for other stores and in-memory ones."""
    if not uri.startswith("sqlite"):
        return None
    database = make_url(uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()  # Relative to the working folder, as SQLite opens it.


def prepare() -> None:
    """Put the tracking store's SQLite file in WAL mode and create its schema once, if it is SQLite.

    The URI is MLflow's own choice (``MLFLOW_TRACKING_URI``, as ``mlflow run`` hands it over, or
    the default); it is read, never set.
    """
    path = sqlite_file(mlflow.get_tracking_uri())
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # In the temporary folder, not beside the database: this lock only orders the setting up.
    lock = Path(tempfile.gettempdir()) / f"kdflow-sqlite-{hashlib.sha256(str(path).encode()).hexdigest()[:16]}.lock"
    # Opened for reading: another user's lock file can be locked too.
    with open(os.open(lock, os.O_RDONLY | os.O_CREAT, 0o666)) as held:
        if fcntl:
            fcntl.flock(held, fcntl.LOCK_EX)  # Released when the file closes, or when its holder dies.
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as database:
            # Switching needs a moment with no reader; a reader that holds on leaves it to the next command.
            with contextlib.suppress(sqlite3.OperationalError):
                if database.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    database.execute("PRAGMA journal_mode=WAL")
        mlflow.MlflowClient()  # Opening the store creates the schema and the default experiment.
