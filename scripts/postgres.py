"""A throwaway PostgreSQL server for MLflow's tracking store, on one machine.

Tests, benchmarks and the README's multi-machine recipe (tried on one machine) need a real
database backend; this starts one in a folder of its own with Debian's PostgreSQL server
(`apt-get install --no-install-recommends postgresql`) and stops it again:

    python scripts/postgres.py start --dir /tmp/kdflow-pg --port 5433   # prints the SQLAlchemy URI
    python scripts/postgres.py stop --dir /tmp/kdflow-pg

or, from Python (`from scripts import postgres`): ``start(folder, port) -> uri``, ``stop(folder)``,
and ``running(folder, port)``, a context manager that stops the server on leaving it.

It is a local test and benchmark cluster, not a deployment: it listens on 127.0.0.1 only and
trusts every connection from this machine (no password), its owner is the `kdflow` role, and
its data lives and dies with the folder. A real shared store is a PostgreSQL server run and
backed up as such (a managed database, say), with a password in the URI.

Only the standard library is used, so the script runs before anything is installed. PostgreSQL
refuses to run as root: as root, the folder is given to the `postgres` user (which the Debian
package creates) and the server's commands run as that user through `runuser`, so the folder's
parents must be searchable by others (a folder under /tmp is; pytest's tmp_path is not).
"""

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

BIN_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"  # The operating-system user of the server when started as root.
ROLE = DATABASE = "kdflow"  # The role MLflow connects as, owner of its database.
HOST = "127.0.0.1"
INSTALL = "apt-get install --yes --no-install-recommends postgresql"


class PostgresMissing(RuntimeError):
    """Debian's PostgreSQL server is not installed."""


def server_bin() -> Path:
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql/<version>/."""
    found = [path.parent for path in BIN_ROOT.glob("*/bin/initdb") if (path.parent / "pg_ctl").exists()]
    if not found:
        raise PostgresMissing(f"Debian's PostgreSQL server is not installed (no {BIN_ROOT}/<version>/bin/initdb): {INSTALL}")
    version = lambda path: [int(part) for part in re.findall(r"\d+", path.parent.name)] or [0]
    return max(found, key=version)


def uri(port: int) -> str:
    """The SQLAlchemy URI of the server on ``port``, for `mlflow server --backend-store-uri`. It
    names its driver, psycopg 3 (`pip install -e '.[postgres]'`): a bare postgresql:// means
    psycopg 3 to SQLAlchemy 2.1 but psycopg2 to 2.0."""
    return f"postgresql+psycopg://{ROLE}@{HOST}:{port}/{DATABASE}"


def _layout(folder) -> tuple[Path, Path, Path, Path]:
    folder = Path(folder).resolve()
    return folder, folder / "data", folder / "sockets", folder / "server.log"


def _as_server(command: list, folder: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run one of the server's commands, as the `postgres` user when this process is root."""
    command = [str(part) for part in command]
    name = Path(command[0]).name
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise RuntimeError("runuser (Debian's util-linux) is needed to run PostgreSQL as the postgres user")
        command = ["runuser", "-u", SERVER_USER, "--", *command]
    process = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if check and process.returncode != 0:
        raise RuntimeError(f"{name} failed: {' '.join(command)}\n{process.stdout[-2000:]}{process.stderr[-2000:]}")
    return process


def _log_tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-3000:]
    except OSError:
        return "(no server log)"


def _prepare(folder: Path) -> None:
    """Make the folder the server's: as root, owned by the postgres user, who must reach it."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return
    try:
        owner = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresMissing(f"there is no {SERVER_USER} user, which Debian's postgresql package creates: {INSTALL}") from None
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, owner.pw_uid, owner.pw_gid, follow_symlinks=False)
    probe = subprocess.run(["runuser", "-u", SERVER_USER, "--", "test", "-w", str(folder)], cwd="/")
    if probe.returncode != 0:
        raise RuntimeError(
            f"the {SERVER_USER} user cannot write to {folder}: every folder above it must be searchable by others "
            "(pytest's tmp_path is not); choose a folder under /tmp"
        )


def is_running(folder) -> bool:
    """Whether a server of this folder is running."""
    _, data, _, _ = _layout(folder)
    if not (data / "PG_VERSION").exists():
        return False
    return _as_server([server_bin() / "pg_ctl", "status", "-D", data], data.parent, check=False).returncode == 0


def start(folder, port: int) -> str:
    """Start a server on 127.0.0.1:``port`` with its data in ``folder`` (made, or reused if it
    holds one already); return the SQLAlchemy URI of its `kdflow` database once it accepts
    connections."""
    bin_dir = server_bin()
    folder, data, sockets, log = _layout(folder)
    # PostgreSQL passes the options below through a shell, and a Unix socket path has at most 107 bytes.
    if re.search(r"[^\w./+-]", str(folder)) or len(str(sockets / ".s.PGSQL.65535.lock")) > 107:
        raise RuntimeError(f"{folder}: use a short folder path of letters, digits and ./_+- only")
    _prepare(folder)
    if is_running(folder):
        raise RuntimeError(f"a PostgreSQL server already runs in {folder}; stop it first (python scripts/postgres.py stop --dir {folder})")
    fresh = not (data / "PG_VERSION").exists()
    if fresh:
        # Trust: any local connection gets in, without a password; fine for a cluster that listens
        # on 127.0.0.1 and lives for a test or a benchmark only. --no-sync: its files need not survive a crash.
        _as_server([bin_dir / "initdb", "-D", data, "-U", SERVER_USER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"], folder)
    if not sockets.exists():
        _as_server(["mkdir", "-m", "700", sockets], folder)
    options = f"-p {int(port)} -k {sockets} -c listen_addresses={HOST}"
    started = _as_server([bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start"], folder, check=False)
    if started.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start on {HOST}:{port} (is the port taken?):\n{started.stdout}{started.stderr}\n{_log_tail(log)}")
    if fresh:
        connect = ["-h", sockets, "-p", str(port), "-U", SERVER_USER]
        _as_server([bin_dir / "createuser", *connect, ROLE], folder)
        _as_server([bin_dir / "createdb", *connect, "-O", ROLE, DATABASE], folder)
    return uri(port)


def stop(folder) -> bool:
    """Stop the server of ``folder`` (fast: open sessions are ended); return whether one ran."""
    _, data, _, log = _layout(folder)
    if not (data / "postmaster.pid").exists():
        return False
    stopped = _as_server([server_bin() / "pg_ctl", "stop", "-D", data, "-m", "fast", "-w", "-t", "60"], data.parent, check=False)
    if stopped.returncode != 0 and is_running(folder):
        raise RuntimeError(f"PostgreSQL in {folder} did not stop:\n{stopped.stdout}{stopped.stderr}\n{_log_tail(log)}")
    return True


@contextmanager
def running(folder, port: int):
    """A server for the ``with`` block: yields its URI, and stops it on leaving (the data stays)."""
    address = start(folder, port)
    try:
        yield address
    finally:
        stop(folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/postgres.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    starting = commands.add_parser("start", help="start a server (made on first use) and print its URI")
    starting.add_argument("--dir", required=True, help="the cluster's folder (made if missing)")
    starting.add_argument("--port", required=True, type=int, help="the TCP port on 127.0.0.1")
    stopping = commands.add_parser("stop", help="stop the server of a folder")
    stopping.add_argument("--dir", required=True, help="the cluster's folder")
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "start":
            print(start(arguments.dir, arguments.port))
        elif not stop(arguments.dir):
            print(f"no PostgreSQL server was running in {arguments.dir}", file=sys.stderr)
    except (PostgresMissing, RuntimeError) as error:
        print(f"scripts/postgres.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
