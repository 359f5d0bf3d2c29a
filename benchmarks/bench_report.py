"""What Ray Tune's reports cost a trial, measured apart from kdflow: no MLflow, no TensorFlow.

Command (about 3 minutes on 2 cores, no GPU), from the project root in the README's environment:

    python benchmarks/bench_report.py [--trials 4] [--reports 51] [--segment-ms 300]

Each trial alternates a segment of CPU work (NumPy matrix products, one thread, as a stretch of
training between two evaluations is) with a report of five metrics: 51 reports, as a 5000-step
teacher evaluated every 100 steps makes. The same trials run on a local Ray of two one-CPU
slots three ways, one after another in this process: without reports but the last (the
baseline); calling ``tune.report`` from the loop, as kdflow's trials did (blocking); and handing
each report to a thread of its own, as ``kdflow.trials.Reporter`` does (non-blocking). It prints,
per way, each trial's wall time beyond the baseline's median (p50 and max), and for the
blocking way the time the loop spent inside ``tune.report``.
"""

import argparse
import os
import queue
import statistics
import sys
import threading
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # One slot, one core: as a trial with cpus_per_trial=1.

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402

MATRIX = 256


def work(products: int) -> None:
    matrix = np.random.default_rng(0).standard_normal((MATRIX, MATRIX))
    for _ in range(products):
        matrix = np.tanh(matrix @ matrix / MATRIX)


def products_per_segment(segment_ms: float) -> int:
    """How many products make a segment of ``segment_ms`` on this machine, measured once, unloaded."""
    started = time.perf_counter()
    work(50)
    return max(1, round(50 * segment_ms / 1000 / (time.perf_counter() - started)))


def trainable(config: dict) -> None:
    reports, products, way = config["reports"], config["products"], config["way"]
    pending: queue.Queue = queue.Queue()

    def hand_over() -> None:
        while (metrics := pending.get()) is not None:
            tune.report(metrics)

    reporter = threading.Thread(target=hand_over, daemon=True)
    if way == "non-blocking":
        reporter.start()
    started, in_report = time.perf_counter(), 0.0
    for step in range(1, reports + 1):
        work(products)
        metrics = {"step": step, "train_loss": 1.0 / step, "validation_loss": 1.0, "validation_accuracy": 0.5, "x": 0.0}
        if way == "blocking":
            before = time.perf_counter()
            tune.report(metrics)
            in_report += time.perf_counter() - before
        elif way == "non-blocking":
            pending.put(metrics)
    if way == "non-blocking":
        pending.put(None)
        reporter.join()
    tune.report({"step": reports, "wall_s": time.perf_counter() - started, "in_report_s": in_report})


def run(way: str, trials: int, reports: int, products: int) -> list[dict]:
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"way": way, "reports": reports, "products": products, "trial": tune.grid_search(list(range(trials)))},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name=f"bench-report-{way}", verbose=0),
    )
    return [result.metrics for result in tuner.fit()]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--reports", type=int, default=51)
    parser.add_argument("--segment-ms", type=float, default=300)
    arguments = parser.parse_args(argv)
    print(f"command: python benchmarks/bench_report.py {' '.join(argv if argv is not None else sys.argv[1:])}", flush=True)
    products = products_per_segment(arguments.segment_ms)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        walls = {way: run(way, arguments.trials, arguments.reports, products)
                 for way in ("baseline", "blocking", "non-blocking")}
    finally:
        ray.shutdown()
    baseline = statistics.median(result["wall_s"] for result in walls["baseline"])
    print(f"{arguments.trials} trials x {arguments.reports} reports, segments of {arguments.segment_ms:g} ms "
          f"({products} products), 2 slots; baseline wall per trial {baseline:.1f} s")
    summary = {}
    for way, results in walls.items():
        beyond = [result["wall_s"] - baseline for result in results]
        summary[way] = statistics.median(beyond)
        line = f"  {way:12s} beyond the baseline: p50 {statistics.median(beyond):6.2f} s, max {max(beyond):6.2f} s"
        if way == "blocking":
            line += f"; inside tune.report: p50 {statistics.median(result['in_report_s'] for result in results):.2f} s"
        print(line, flush=True)
    return summary


if __name__ == "__main__":
    main()
