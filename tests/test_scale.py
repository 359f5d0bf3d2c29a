"""The scale benchmark in small, with its faults: a 4-node Ray cluster on this machine, 20 short
distillations tracked by `mlflow server` on a real PostgreSQL, then a 5-trial sweep per fault (a
worker node removed, the server killed and restarted, the driver killed and the sweep resumed).

benchmarks/bench_scale.py is the code under test; its goals (efficiency, overhead) are judged
in the benchmark at 8 nodes and 200 trials, not in this timed test, which checks that nothing is
lost or doubled: every trial has exactly one FINISHED run with every evaluation step's metrics,
and nothing is left RUNNING.
"""

from pathlib import Path

import pytest

from benchmarks import bench_scale
from tests.conftest import install_debian_package

pytestmark = pytest.mark.slow


def test_twenty_trials_on_four_nodes_and_postgresql_lose_nothing_through_faults(fetched_mnist, monkeypatch, capsys):
    reason = install_debian_package("postgresql", Path("/usr/lib/postgresql"))
    if reason:
        pytest.skip(f"PostgreSQL cannot be installed here, so the PostgreSQL-backed cluster is not run: {reason}")
    monkeypatch.setenv("KDFLOW_CACHE_DIR", str(fetched_mnist[1]))
    for name in ("MLFLOW_TRACKING_URI", "PYTHONPATH", "KDFLOW_BENCH_CALL_LOG"):  # The benchmark sets these itself.
        monkeypatch.setenv(name, "")

    report = bench_scale.main(["--nodes", "4", "--trials", "20", "--cold-trials", "0", "--faults", "--fault-trials", "5"])

    expected = {"finished": 20, "duplicates": 0, "running": 0, "missing_metric_steps": 0}
    assert {name: report[name] for name in expected} == expected, capsys.readouterr().out
    for fault in ("remove_node", "restart_server", "kill_driver"):
        assert report["faults"][fault] == {**expected, "finished": 5}, (fault, capsys.readouterr().out)
    assert "scale: backend=postgresql nodes=4 trials=20 finished=20 duplicates=0 running=0" in capsys.readouterr().out
