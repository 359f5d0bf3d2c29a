"""Telling a live run from one whose process is gone, from its tags (kdflow/liveness.py).

On this machine a run's process is looked up by its id and start time; for another machine only
the heartbeat can tell. Real processes stand in for runs here: this one, and one that has ended.
The end-to-end cases (a process group killed outright, a run that failed while its server was
down) are in tests/test_faults.py.
"""

import json
import os
import subprocess
import sys
import time

import psutil

from kdflow import liveness

NOW = time.time()
START_MS = int(NOW * 1000)


def tags(machine: str, pid: int, started: float, beat: float | None) -> dict:
    process = {liveness.PROCESS_TAG: json.dumps({"machine": machine, "pid": pid, "started": started})}
    return process | ({liveness.HEARTBEAT_TAG: f"{beat:.0f}"} if beat is not None else {})


def test_on_this_machine_the_process_itself_decides():
    here = liveness.this_machine()
    started = psutil.Process().create_time()
    # Alive, however long ago it beat (a process busy in one long call still exists).
    assert liveness.why_gone(tags(here, os.getpid(), started, NOW - 3600), START_MS, NOW, here) is None
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended_started = psutil.Process(ended.pid).create_time()
    ended.wait()
    reason = liveness.why_gone(tags(here, ended.pid, ended_started, NOW), START_MS, NOW, here)
    assert reason == f"its process {ended.pid} on {here.split('/')[0]} no longer exists"
    # The same process id, now another process's (started at another time), is not the run's.
    assert liveness.why_gone(tags(here, os.getpid(), started - 100, NOW), START_MS, NOW, here) is not None


def test_elsewhere_the_heartbeat_decides():
    elsewhere, here = "node-7/another-boot", liveness.this_machine()
    fresh = tags(elsewhere, 123, 0.0, NOW - liveness.HEARTBEAT_SECONDS)
    assert liveness.why_gone(fresh, START_MS, NOW, here) is None
    stale = tags(elsewhere, 123, 0.0, NOW - liveness.DEAD_AFTER_SECONDS - 1)
    assert liveness.why_gone(stale, START_MS, NOW, here) == f"its last heartbeat (process 123 on node-7) was {liveness.DEAD_AFTER_SECONDS + 1} s ago"
    # A host name shared by two machines (containers): the boot tells them apart.
    same_name = tags(here.split("/")[0] + "/another-boot", os.getpid(), psutil.Process().create_time(), NOW - 3600)
    assert liveness.why_gone(same_name, START_MS, NOW, here) is not None


def test_a_run_that_never_beat_is_given_time():
    """An older kdflow's runs record no process and no heartbeat: they may still be training."""
    started_ms = int((NOW - liveness.NEVER_BEAT_AFTER_SECONDS + 60) * 1000)
    assert liveness.why_gone({}, started_ms, NOW, liveness.this_machine()) is None
    started_ms = int((NOW - liveness.NEVER_BEAT_AFTER_SECONDS - 60) * 1000)
    assert "never sent a heartbeat" in liveness.why_gone({}, started_ms, NOW, liveness.this_machine())
