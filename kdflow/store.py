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

A store on another machine (a tracking server, a database) is asked first whether it answers at
all: MLflow's client retries an unreachable server for minutes before it gives up, so a command
would sit silent for that long and then fail as if its input were bad.
"""

import contextlib
import hashlib
import os
import socket
import sqlite3
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
from sqlalchemy.engine import make_url

# Seconds to wait for a TCP connection, then for a tracking server's answer: about 15 s at most in all.
CONNECT_SECONDS, ANSWER_SECONDS = 5, 10
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


class Unreachable(Exception):
    """The tracking or registry store does not answer: not bad input, and nothing could be recorded."""


def _address(uri: str) -> tuple[str, int] | None:
    """(host, port) of a store on the network, None for a local one (a file, SQLite, a socket)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    backend = parts.scheme.split("+")[0]
    if backend in DATABASE_PORTS:
        url = make_url(uri)
        return (url.host, url.port or DATABASE_PORTS[backend]) if url.host else None
    return None


def check_reachable(uri: str) -> None:
    """Raise Unreachable, naming the URI, unless the store at ``uri`` answers within about 15 s.

    Any HTTP answer counts, even a refusal: what the server says is then MLflow's to report, at
    once. The URI is printed without a password it may hold.
    """
    address = _address(uri)
    if address is None:
        return
    shown = make_url(uri).render_as_string(hide_password=True) if not uri.startswith("http") else uri
    try:
        socket.create_connection(address, timeout=CONNECT_SECONDS).close()
        if uri.startswith("http"):
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=ANSWER_SECONDS).close()
    except (urllib.error.HTTPError, ssl.SSLError):
        return  # A server answered.
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise Unreachable(
            f"the tracking store {shown} does not answer ({reason}); start it, or point MLFLOW_TRACKING_URI "
            "(and MLFLOW_REGISTRY_URI, if set) at one that runs"
        ) from None


def check_stores() -> None:
    """The tracking store and, if it is another, the model registry's: each must answer."""
    for uri in dict.fromkeys((mlflow.get_tracking_uri(), mlflow.get_registry_uri())):
        check_reachable(uri)

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
