"""What ASHA saves on a grid of distillations, against the same grid run to the end.

Command (about 15 minutes on 2 cores, no GPU), from the project root in the README's environment:

    python benchmarks/bench_asha.py

The README's example grid (temperatures 1, 2, 5, 10, 20 x loss weights 0.1, 0.5, 0.9, seed 12,
900 steps, one teacher at T=5) runs as the `sweep` entry point twice on a local Ray, each time into
a new SQLite store: once with scheduler=asha and once without. It prints each sweep's wall time,
the distillation steps trained (from each run's metric history), and the best distillation each
found, by validation accuracy (the sweep's selection metric) and with its test accuracy.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--kinds", "teacher,distill", "--temperature", "1,2,5,10,20", "--loss", "weighted", "--hard_label_weight", "0.1,0.5,0.9",
        "--teacher_temperature", "5", "--seed", "12", "--num_steps", "900", "--eval_every", "50"]


def sweep(folder: Path, scheduler: str) -> tuple[float, int, int, str]:
    """Wall seconds, distillation steps trained, distillations stopped, and the best one found."""
    uri = f"sqlite:///{folder}/mlflow.db"
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "entrypoints" / "sweep.py"), *GRID, "--scheduler", scheduler],
                   cwd=folder, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    mlflow.set_tracking_uri(uri)
    distills = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`kdflow.kind` = 'distill'",
                                  output_format="list")
    client = mlflow.MlflowClient()
    steps = sum(max(point.step for point in client.get_metric_history(run.info.run_id, "validation_accuracy"))
                for run in distills)
    finished = [run for run in distills if run.info.status == "FINISHED"]
    best = max(finished, key=lambda run: run.data.metrics["best_validation_accuracy"])
    described = (f"{best.info.run_name}: validation {100 * best.data.metrics['best_validation_accuracy']:.2f}, "
                 f"test {100 * best.data.metrics['test_accuracy']:.2f}")
    return wall, steps, len(distills) - len(finished), described


def main() -> None:
    print(f"command: python benchmarks/bench_asha.py  ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as full_folder, tempfile.TemporaryDirectory() as asha_folder:
        full = sweep(Path(full_folder), "")
        asha = sweep(Path(asha_folder), "asha")
    for name, (wall, steps, stopped, best) in (("to the end", full), ("scheduler=asha", asha)):
        print(f"  {name:15s} {wall:6.1f} s, {steps:5d} distillation steps, {stopped:2d} stopped; best {best}")
    print(f"  ASHA: {100 * (1 - asha[1] / full[1]):.0f}% fewer distillation steps, "
          f"{100 * (1 - asha[0] / full[0]):.0f}% less wall time (the teacher included)")


if __name__ == "__main__":
    main()
