"""Sweep speed on one 2-core machine, as a ratio against the same trials run one after another.

Command (about 10 minutes on 2 cores, no GPU), from the project root in the README's environment:

    python benchmarks/bench_sweep.py

Four distill trials (T = 2, 5 x seeds 12, 13; 1000 steps) run as a sweep on a local Ray with
one CPU per trial (two at once), against the same four trials with two CPUs per trial (one at a
time). Target: at least 1.6x. The teachers are trained once beforehand and reused by both
sweeps; between the sweeps the distill runs are deleted so the second one trains them again.
Ray and sweep overhead per trial: the CPU slots' time (2 x the parallel sweep's wall time) less
the jobs' own MLflow run time (start to end), shared out over the four trials.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = ["--num_steps", "1000", "--temperature", "2,5", "--seed", "12,13"]


def sweep(*arguments: str) -> float:
    """Run the sweep job in this process, as the sweep entry point does; return its wall seconds."""
    from kdflow import experiments, sweeps

    started = time.perf_counter()
    sweeps.run_sweep(experiments.parse_args([*RECIPE, *arguments]))
    return time.perf_counter() - started


def distill_runs():
    return mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`kdflow.kind` = 'distill'", output_format="list"
    )


def main() -> None:
    import ray

    with tempfile.TemporaryDirectory() as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        os.chdir(folder)
        sweep("--kinds", "teacher")  # The teachers both sweeps reuse.
        ray.shutdown()
        sequential_seconds = sweep("--kinds", "distill", "--cpus_per_trial", "2")
        ray.shutdown()
        for run in distill_runs():
            mlflow.delete_run(run.info.run_id)
        parallel_seconds = sweep("--kinds", "distill", "--cpus_per_trial", "1")
        job_seconds = [(run.info.end_time - run.info.start_time) / 1000 for run in distill_runs()]
    print(f"command: python benchmarks/bench_sweep.py  ({os.cpu_count()} cores)")
    print("four distill trials (T=2,5 x seeds 12,13, 1000 steps each), wall time of the sweep:")
    print(f"  one after another (2 CPUs per trial)  {sequential_seconds:7.1f} s")
    print(f"  two at a time (1 CPU per trial)       {parallel_seconds:7.1f} s")
    print(f"  speed-up                              {sequential_seconds / parallel_seconds:7.2f}x  (target >= 1.6)")
    print(f"  MLflow run time per trial (job start to end): {', '.join(f'{s:.1f}' for s in job_seconds)} s")
    print(f"  Ray and sweep overhead per trial, two at a time: {(2 * parallel_seconds - sum(job_seconds)) / len(job_seconds):.1f} s")


if __name__ == "__main__":
    main()
