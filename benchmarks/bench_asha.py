"""What ASHA saves on experiments/asha-grid.yaml's distillations, against the same grid run to the end.

Command (about 5 to 9 minutes on 2 cores, no GPU), from the project root in the README's environment:

    python benchmarks/bench_asha.py

The grid's teacher is trained first (the file's sweep with kinds=teacher, two CPUs, untimed) into
a new SQLite store, which is then copied twice. The file's sweep runs in each copy, once as it is
(scheduler: asha) and once with its scheduler line left out, and reuses that teacher: the two wall
times differ only in what a scheduler decides, the distillations. It prints each sweep's wall time, the distillation
steps trained (from each run's metric history), the distillations stopped, the worker processes
that ran them (as many as slots when stopped trials keep their workers warm), and the best
distillations each found best by validation accuracy (the scheduler's metric; several can tie),
with their test accuracy.
Goals: ASHA at least 30% less wall time than the grid run to the end, the same best distillation,
and no more workers than slots.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "asha-grid.yaml"
SLOTS = os.cpu_count()  # one CPU per trial, the file's default


def run_sweep(folder: Path, experiment: Path, *overrides: str) -> float:
    """Run an experiment file's sweep into the store in ``folder``; its wall seconds."""
    command = [sys.executable, str(ROOT / "entrypoints" / "sweep.py"), "--experiment", str(experiment), *overrides]
    started = time.perf_counter()
    subprocess.run(command, cwd=folder, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"},
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def measure(folder: Path, experiment: Path) -> dict:
    """The sweep's wall time and what its distillations did."""
    wall = run_sweep(folder, experiment)
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    (sweep,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`kdflow.kind` = 'sweep'",
                                  order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    trials = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string=f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}'")
    if any(run.data.tags["kdflow.kind"] == "teacher" for run in trials):
        raise RuntimeError(f"the sweep of {experiment} trained its teacher again instead of reusing it")
    client = mlflow.MlflowClient()
    steps = sum(max(point.step for point in client.get_metric_history(run.info.run_id, "validation_accuracy"))
                for run in trials)
    finished = [run for run in trials if run.info.status == "FINISHED"]
    # The best distillation by the scheduler's metric; with 5,000 validation images several reach
    # the same accuracy (a tie is 1 image in 5,000), and each of them is a best one.
    validation = max(run.data.metrics["best_validation_accuracy"] for run in finished)
    best = {run.info.run_name: 100 * run.data.metrics["test_accuracy"] for run in finished
            if run.data.metrics["best_validation_accuracy"] == validation}
    return {"wall": wall, "steps": steps, "stopped": len(trials) - len(finished), "trials": len(trials),
            "workers": len({run.data.tags["kdflow.worker_pid"] for run in trials}), "best": best,
            "validation": 100 * validation}


def main() -> dict:
    print(f"command: python benchmarks/bench_asha.py  ({os.cpu_count()} cores, {SLOTS} slots)", flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        base = Path(temporary) / "teacher"
        base.mkdir()
        teacher_seconds = run_sweep(base, EXPERIMENT, "--kinds", "teacher", "--cpus_per_trial", str(SLOTS))
        # The same file without its scheduler (an empty -P scheduler keeps the file's): the same
        # name, so the same sweep, each trial run to the end.
        to_the_end = Path(temporary) / "without-scheduler" / EXPERIMENT.name
        to_the_end.parent.mkdir()
        lines = EXPERIMENT.read_text().splitlines(keepends=True)
        to_the_end.write_text("".join(line for line in lines if line.strip() != "scheduler: asha"))
        measured = {}
        for name, experiment in (("to the end", to_the_end), ("scheduler=asha", EXPERIMENT)):
            folder = Path(temporary) / name.replace(" ", "-")
            # The copies keep the teacher's artifacts where the base store put them, which both read.
            shutil.copytree(base, folder)
            measured[name] = measure(folder, experiment)
    print(f"the teacher, trained once beforehand: {teacher_seconds:.0f} s; each sweep below reuses it")
    for name, figures in measured.items():
        best = ", ".join(f"{run} (test {test:.2f})" for run, test in sorted(figures["best"].items()))
        print(f"  {name:15s} {figures['wall']:6.1f} s, {figures['steps']:6d} distillation steps, "
              f"{figures['stopped']:2d} of {figures['trials']} stopped, {figures['workers']} workers; best validation "
              f"{figures['validation']:.2f}: {best}")
    full, asha = measured["to the end"], measured["scheduler=asha"]
    saved = 1 - asha["wall"] / full["wall"]
    # The same best: ASHA's best validation accuracy is the grid's, reached by distillations that
    # are among the grid's best when every trial runs to the end.
    same_best = asha["validation"] == full["validation"] and asha["best"].keys() <= full["best"].keys()
    print(f"  ASHA: {100 * (1 - asha['steps'] / full['steps']):.0f}% fewer distillation steps, "
          f"{100 * saved:.0f}% less wall time (goal >= 30%); the same best distillation: "
          f"{'yes' if same_best else 'no'}; workers {asha['workers']} for {SLOTS} slots "
          f"(goal: warm through stops, no more than the slots)")
    return {"saved": saved, "same_best": same_best, "workers": asha["workers"]}


if __name__ == "__main__":
    main()
