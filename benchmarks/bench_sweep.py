"""Sweep parallelism on one 2-core machine: the same trials on a Ray cluster of two slots against one.

Command (about 6 minutes on 2 cores, no GPU), from the project root in the README's environment:

    python benchmarks/bench_sweep.py

Six MLP students alone (seeds 12 to 17, recipe=tuned, 5000 steps) run as a sweep, one CPU per
trial, on a Ray cluster of one CPU (one trial at a time) and then of two (two at once), each
started for the purpose (``ray.cluster_utils.Cluster``) and joined by address as a user joins
one. Every trial computes on one thread either way, so the ratio is what the sweep's second slot
buys. Why these trials:

- Students need no teacher, and an MLP's 5000 steps take about 30 s on one thread, long beside
  what a slot pays once (its worker's start, importing TensorFlow) and what every trial pays
  (its model, evaluation, registry version and table), so the ratio measures the parallelism
  rather than the start-up.
- A trial given one CPU runs TensorFlow on one thread, but its input pipeline (shuffled batches,
  prefetched) has a thread of its own. For the MLP that thread is idle most of the time (0.98
  cores busy); for softmax regression, whose steps are tiny, it works as much as the training
  thread (1.7 cores busy), so two softmax trials at once on two cores run 2.6 times slower each,
  and a second slot buys nothing.
- Giving a lone trial both cores instead measures TensorFlow's threads (the MLP trains 1.5x
  faster on two), not the sweep.

Target: at least 1.6x. Between the sweeps the student runs are deleted, so the second sweep
trains them again. Ray and sweep overhead per trial: the slots' time (slots x the sweep's wall
time) less the jobs' own MLflow run time (start to end), shared out over the trials.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEEDS = "12,13,14,15,16,17"
RECIPE = ["--kinds", "student", "--student_model", "mlp", "--recipe", "tuned", "--seed", SEEDS, "--cpus_per_trial", "1"]


def sweep(slots: int) -> float:
    """Run the sweep job in this process, as the sweep entry point does, on a new Ray cluster of
    ``slots`` CPUs; return its wall seconds (the cluster's start left out)."""
    import ray
    from ray.cluster_utils import Cluster

    from kdflow import experiments, sweeps

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": slots, "include_dashboard": False})
    try:
        started = time.perf_counter()
        sweeps.run_sweep(experiments.parse_args([*RECIPE, "--address", cluster.address]))
        return time.perf_counter() - started
    finally:
        ray.shutdown()
        cluster.shutdown()


def student_runs():
    return mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`kdflow.kind` = 'student'", output_format="list"
    )


def run_seconds(runs) -> list[float]:
    return [(run.info.end_time - run.info.start_time) / 1000 for run in runs]


def main() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        os.chdir(folder)
        one_at_a_time = sweep(1)
        one_slot_jobs = run_seconds(student_runs())
        for run in student_runs():
            mlflow.delete_run(run.info.run_id)
        two_at_a_time = sweep(2)
        two_slot_jobs = run_seconds(student_runs())
    trials = len(two_slot_jobs)
    print(f"command: python benchmarks/bench_sweep.py  ({os.cpu_count()} cores)")
    print(f"{trials} MLP student trials (recipe=tuned, seeds {SEEDS}, 5000 steps each, one CPU each), wall time of the sweep:")
    print(f"  one slot (a Ray of 1 CPU)   {one_at_a_time:7.1f} s")
    print(f"  two slots (a Ray of 2 CPUs) {two_at_a_time:7.1f} s")
    print(f"  speed-up                    {one_at_a_time / two_at_a_time:7.2f}x  (target >= 1.6)")
    for label, jobs, slots, wall in (("one slot", one_slot_jobs, 1, one_at_a_time),
                                     ("two slots", two_slot_jobs, 2, two_at_a_time)):
        print(f"  {label}: MLflow run time per trial {min(jobs):.1f}-{max(jobs):.1f} s (median "
              f"{sorted(jobs)[len(jobs) // 2]:.1f}); Ray and sweep overhead per trial {(slots * wall - sum(jobs)) / len(jobs):.1f} s")
    return {"speed_up": one_at_a_time / two_at_a_time}


if __name__ == "__main__":
    main()
