"""The scale benchmark's fault sweep in small: a 3-node Ray cluster on this machine, tracked by
`mlflow server` on a real PostgreSQL, and a 10-trial sweep of short distillations meeting the
faults in turn (a worker node removed; the driver suspended while a resume is refused, then
killed, and the sweep resumed; the server killed and restarted).

benchmarks/bench_scale.py is the code under test; its goals (efficiency, overhead) are judged in
the benchmark at 8 nodes and 200 trials, and its fault-free sweep adds nothing this test would
check, so only the fault sweep runs here. Checked: nothing is lost or doubled, every trial has
exactly one FINISHED run with every evaluation step's metrics, and nothing is left RUNNING.
"""

from pathlib import Path

import pytest

from benchmarks import bench_scale
from tests.conftest import install_debian_package

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # tests/conftest.py says why


def test_trials_on_three_nodes_and_postgresql_and_faults_lose_nothing(fetched_mnist, monkeypatch, capsys):
    reason = install_debian_package("postgresql", Path("/usr/lib/postgresql"))
    if reason:
        pytest.skip(f"PostgreSQL cannot be installed here, so the PostgreSQL-backed cluster is not run: {reason}")
    monkeypatch.setenv("KDFLOW_CACHE_DIR", str(fetched_mnist[1]))
    for name in ("MLFLOW_TRACKING_URI", "PYTHONPATH", "KDFLOW_BENCH_CALL_LOG"):  # The benchmark sets these itself.
        monkeypatch.setenv(name, "")

    with bench_scale.scale_setup(3) as (folder, server, cluster):
        bench_scale.train_teachers(list(bench_scale.SEEDS["faults"]), cluster.address, folder / "logs")
        checks = bench_scale.faults_run(10, cluster, server, folder / "logs")

    # Mid-sweep, after each of the first two faults: nothing doubled or missing among the trials finished by then.
    for fault in ("remove_node", "kill_driver"):
        check = checks[fault]
        assert (check["duplicates"], check["missing_metric_steps"]) == (0, 0) and check["finished"] > 0, (fault, check)
    # After the last, once the sweep is over: every trial once, complete, and nothing left running.
    expected = {"finished": 10, "duplicates": 0, "running": 0, "missing_metric_steps": 0}
    assert checks["restart_server"] == expected, capsys.readouterr().out
