"""Which RUNNING runs are alive: every kdflow run says where it runs and beats while it does, so
that a run whose process is gone can be found and ended, whatever killed it.

A process killed with ``kill -9``, a machine that lost power, or a run that failed while its store
was full or down cannot end its own run, which then shows RUNNING for ever. Each run records its
process (machine, process id and start time) when it starts, and a heartbeat tag every
``HEARTBEAT_SECONDS`` while it runs. A RUNNING run is gone when its process no longer exists, if it
ran on this machine, or else when it has not beaten for ``DEAD_AFTER_SECONDS``. ``kdflow-end-orphans``
ends such runs FAILED, saying why; a sweep's ``resume`` asks the same of the sweep it continues.
"""

import contextlib
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import psutil

from kdflow import tracking

PROCESS_TAG = "kdflow.process"  # JSON: the machine (host name and boot), pid and the process's start time
HEARTBEAT_TAG = "kdflow.heartbeat"  # when the run last said it was alive, in seconds since the epoch
HEARTBEAT_SECONDS = 5
DEAD_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS  # Three beats missed: the run's process is gone.
# A run names its process and beats once in the tags that make it a kdflow run, so one that never
# beat is an older kdflow's, which may still be training: it is given ten minutes from its start.
NEVER_BEAT_AFTER_SECONDS = 600
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def this_machine() -> str:
    """This machine as it is now: its host name and, on Linux, its boot, after which process ids
    start again (two containers may share a host name; they do not share a boot id)."""
    try:
        boot = _BOOT_ID.read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def process_tags() -> dict[str, str]:
    """The tags that say where the calling process runs, with its first heartbeat."""
    process = {"machine": this_machine(), "pid": os.getpid(), "started": psutil.Process().create_time()}
    return {PROCESS_TAG: json.dumps(process), HEARTBEAT_TAG: f"{time.time():.0f}"}


@contextmanager
def heartbeat(run_id: str):
    """Tag the run with the time every HEARTBEAT_SECONDS while the block runs. A beat the store
    misses is only a late beat; the beats stop before the block's run is ended, either way."""
    stop = threading.Event()
    client = mlflow.MlflowClient()

    def beat():
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):
                client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.0f}")

    thread = threading.Thread(target=beat, name="kdflow-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _process_exists(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        # A reused process id belongs to a process started later.
        return abs(process.create_time() - started) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def why_gone(tags: dict, start_time_ms: int, now: float, machine: str) -> str | None:
    """Why a RUNNING run with these tags is gone, or None while it may be alive."""
    process = json.loads(tags.get(PROCESS_TAG, "{}"))
    if process.get("machine") == machine:
        if _process_exists(process["pid"], process["started"]):
            return None
        return f"its process {process['pid']} on {machine.split('/')[0]} no longer exists"
    if HEARTBEAT_TAG not in tags:
        silent_for = now - start_time_ms / 1000
        return f"it never sent a heartbeat, and started {silent_for:.0f} s ago" if silent_for > NEVER_BEAT_AFTER_SECONDS else None
    silent_for = now - float(tags[HEARTBEAT_TAG])
    where = f" (process {process['pid']} on {process['machine'].split('/')[0]})" if process else ""
    return f"its last heartbeat{where} was {silent_for:.0f} s ago" if silent_for > DEAD_AFTER_SECONDS else None


def end_runs(orphans, status: str, reason: str) -> None:
    """End runs whose process died (or was stopped) before it could end them, saying why."""
    client = mlflow.MlflowClient()
    for run in orphans:
        client.set_tag(run.info.run_id, tracking.ERROR_TAG, reason)
        client.set_terminated(run.info.run_id, status)


def end_orphans(experiment_ids: list[str] | None = None) -> list[tuple[object, str]]:
    """End FAILED every RUNNING kdflow run of the experiments (default: all) whose process is gone;
    return each with the reason. Runs that may be alive are left as they are."""
    running = mlflow.search_runs(
        experiment_ids=experiment_ids, search_all_experiments=experiment_ids is None,
        filter_string=f"attributes.status = 'RUNNING' and tags.`{tracking.KIND_TAG}` != ''", output_format="list",
    )
    now, machine = time.time(), this_machine()
    ended = []
    for run in running:
        reason = why_gone(run.data.tags, run.info.start_time, now, machine)
        if reason is not None:
            end_runs([run], "FAILED", f"its process is gone: {reason}; ended by kdflow-end-orphans")
            ended.append((run, reason))
    return ended
