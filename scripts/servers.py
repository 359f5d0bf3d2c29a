"""Local servers for tests and benchmarks: a free port to start one on, and waiting until it answers.

Tests, benchmarks and their helpers start `mlflow server` and `mlflow models serve` on 127.0.0.1
and must not talk to them before they answer. Only the standard library is used.
"""

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_answers(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    """Return once ``url`` answers; raise ``RuntimeError`` if ``server`` exits or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with status {server.returncode} before {url} answered") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(1)
