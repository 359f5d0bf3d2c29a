"""The growth benchmark in small: a run's own results table costs the same searches, answered by
the same runs, whether its experiment holds 50 other finished runs or 500 (benchmarks/bench_growth.py
measures the time at 100 to 10,000 on PostgreSQL). Nothing trains: the runs are logged as the
entry point leaves them, on a SQLite file."""

import mlflow
import pytest

from benchmarks import bench_growth
from kdflow import results
from kdflow.config import Config

pytestmark = pytest.mark.slow  # Filling 550 runs into SQLite takes half a minute.


def test_a_runs_own_table_reads_the_same_runs_as_its_experiment_grows(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(bench_growth, "FILL_WRITERS", 1)  # SQLite takes one writer at a time.
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("growth")
    # The measured run's row: kdtf's way at T=5 over two seeds, and the same at T=2.
    row = [bench_growth.log_finished_distill(client, experiment, Config(temperature=temperature, seed=seed), f"own-{temperature}-{seed}",
                                             accuracy, with_version=False)
           for temperature, seed, accuracy in ((5.0, 12, 0.91), (5.0, 13, 0.90), (2.0, 12, 0.89))]
    figures, filled = {}, 0
    for size in (50, 500):  # Other rows of the same table: loss=weighted at other loss weights.
        bench_growth.fill(experiment, filled, size, Config().precision, with_version=False)
        filled = size
        figures[size] = bench_growth.table_cost(experiment, row[0])
    # The run itself is read by the caller, then one search each for teachers, students and its row.
    assert figures[50]["table_searches"] == figures[500]["table_searches"] == 3
    assert figures[50]["table_runs"] == figures[500]["table_runs"] == len(row)  # its row, itself included
    anchors = results.records_of([client.get_run(row[0])])
    (table,) = results.tables_of(anchors, results.neighbours(experiment, anchors))
    assert table.rows == ("Distillation",) and table.cell("Distillation", 5.0).n == 2
    # The whole experiment's table, the report's, reads every run: it did grow.
    assert len(results.collect_runs(experiment)) == 500 + len(row)
