"""The full reproduction's wall time on this machine, and where the time goes.

Command (about 45 minutes on 2 cores, no GPU), from the project root in the README's environment:

    python benchmarks/bench_reproduction.py [--store DIR] [--precision float32|bfloat16|auto]

It runs ``mlflow run . --env-manager local`` (the ``main`` entry point: kdtf's table over seeds
12, 13 and 14; with ``--precision``, ``-P precision=...``) in DIR (default: a new temporary
folder, so that everything is trained), times it,
and splits the trial slots' time using what each trial's run logged:

- teacher training, student training: ``train_seconds`` (optimiser steps only);
- evaluation: ``evaluation_seconds`` (validation every ``eval_every`` steps, and the test set);
- MLflow evaluation: ``model_evaluation_seconds`` (``mlflow.models.evaluate`` of the logged model on
  the test set's answers: its metrics, per-class table and confusion matrix);
- teacher logits: ``teacher_logits_seconds`` (the stored soft-target source);
- tracking: the rest of each trial's run (data, parameters, metrics, model logging and
  registration, results regeneration);
- orchestration: slot time outside any trial's run (Ray workers starting and importing
  TensorFlow, scheduling, slots with nothing to run), plus the driver's time before and after
  the sweep.

It also prints the idle slot time of the trial phase (from the first trial's start to the last
one's end, the slots' time outside any trial's run): with no phase barrier, a distillation starts
as soon as its own teacher is finished and students fill the gaps.

Targets: under 45 minutes in all; tracking and orchestration under 10% of it; idle slot time at
most 3% of the trial phase's slot time. Run it again on the
same DIR to check that a second run trains nothing (it then reports the reuse, not a breakdown).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]


def run_reproduction(folder: Path, precision: str | None) -> float:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "--env-manager", "local"]
    if precision:
        command += ["-P", f"precision={precision}"]
    started = time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, check=True)
    return time.perf_counter() - started


def breakdown(sweep_run, wall_seconds: float) -> tuple[dict[str, float], list, int]:
    """Seconds per part of the work summed over trial slots (they add up to slots x wall time),
    the trials trained and the number of slots."""
    trials = mlflow.search_runs(
        experiment_ids=[sweep_run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{sweep_run.info.run_id}' and attributes.status = 'FINISHED'",
        output_format="list",
    )
    parts = dict.fromkeys(["teacher training", "student training", "evaluation", "MLflow evaluation", "teacher logits",
                           "tracking"], 0.0)
    for trial in trials:
        metrics = trial.data.metrics
        training = "teacher training" if trial.data.tags["kdflow.kind"] == "teacher" else "student training"
        parts[training] += metrics["train_seconds"]
        parts["evaluation"] += metrics["evaluation_seconds"]
        parts["MLflow evaluation"] += metrics["model_evaluation_seconds"]
        parts["teacher logits"] += metrics.get("teacher_logits_seconds", 0.0)
        parts["tracking"] += outside_training(trial)
    slots = int(os.cpu_count() // float(sweep_run.data.params.get("params.cpus_per_trial", "1")))
    parts["orchestration"] = slots * wall_seconds - sum(parts.values())
    return parts, trials, slots


def outside_training(run, mlflow_evaluation_outside: bool = False) -> float:
    """A trial's seconds in its run outside training, evaluation and its teacher logits: its
    tracking. MLflow's evaluation counts as evaluation, as bench_growth counts it, unless
    ``mlflow_evaluation_outside``."""
    metrics = run.data.metrics
    inside = metrics["train_seconds"] + metrics["evaluation_seconds"] + metrics.get("teacher_logits_seconds", 0.0)
    if not mlflow_evaluation_outside:
        inside += metrics["model_evaluation_seconds"]
    return (run.info.end_time - run.info.start_time) / 1000 - inside


def teachers_outside(trials: list, mlflow_evaluation_outside: bool = False) -> list[float]:
    """Each teacher's seconds outside training, evaluation and its logits, fewest first (goal: median <= 3 s)."""
    return sorted(outside_training(run, mlflow_evaluation_outside) for run in trials
                  if run.data.tags["kdflow.kind"] == "teacher")


def evaluation_shares(trials: list) -> dict[str, float]:
    """Per kind, the largest share of a run's time that went to evaluation (goal: at most 3%)."""
    shares = {}
    for trial in trials:
        kind = trial.data.tags["kdflow.kind"]
        share = trial.data.metrics["evaluation_seconds"] / ((trial.info.end_time - trial.info.start_time) / 1000)
        shares[kind] = max(shares.get(kind, 0.0), share)
    return shares


def idle_fraction(trials: list, slots: int) -> tuple[float, float]:
    """The trial phase's length in seconds, and the share of its slot time outside any trial's run."""
    phase = (max(run.info.end_time for run in trials) - min(run.info.start_time for run in trials)) / 1000
    busy = sum(run.info.end_time - run.info.start_time for run in trials) / 1000
    return phase, 1 - busy / (slots * phase)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="folder of the tracking store (default: a new temporary one)")
    parser.add_argument("--precision", help="the sweep's precision parameter (default: the MLproject's)")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        folder = (arguments.store or Path(temporary)).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        wall_seconds = run_reproduction(folder, arguments.precision)
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        (sweep_run,) = mlflow.search_runs(
            search_all_experiments=True, filter_string="tags.`kdflow.kind` = 'sweep'",
            order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        parts, trained, slots = breakdown(sweep_run, wall_seconds)
    precision = f" -P precision={arguments.precision}" if arguments.precision else ""
    print(f"mlflow run . --env-manager local{precision}: {wall_seconds / 60:.1f} min wall time (target < 45), "
          f"{len(trained)} trials trained, {slots} at a time, {os.cpu_count()} cores")
    figures = {"minutes": wall_seconds / 60}
    if trained:
        total = sum(parts.values())
        for name, seconds in parts.items():
            print(f"  {name:17s} {seconds / 60:6.1f} slot-min  {100 * seconds / total:5.1f}%")
        overhead = parts["tracking"] + parts["orchestration"]
        with_evaluation = overhead + parts["MLflow evaluation"]
        print(f"  tracking + orchestration: {100 * overhead / total:.1f}% (target < 10%; goal <= 4%); "
              f"{100 * with_evaluation / total:.1f}% with MLflow's evaluation counted as tracking")
        outside, with_evaluation_outside = teachers_outside(trained), teachers_outside(trained, True)
        print(f"  teachers outside training, evaluation and logits: {outside[0]:.1f} to {outside[-1]:.1f} s "
              f"(median {statistics.median(outside):.1f} s; goal: median <= 3 s); median "
              f"{statistics.median(with_evaluation_outside):.1f} s with MLflow's evaluation counted outside")
        figures |= {"overhead_share": overhead / total, "teacher_outside_median_s": statistics.median(outside),
                    "overhead_share_with_evaluation": with_evaluation / total,
                    "teacher_outside_median_with_evaluation_s": statistics.median(with_evaluation_outside)}
        phase, idle = idle_fraction(trained, slots)
        print(f"  trial phase {phase / 60:.1f} min; idle slot time {100 * idle:.1f}% of it (target <= 3%)")
        shares = ", ".join(f"{kind} {100 * share:.1f}%" for kind, share in sorted(evaluation_shares(trained).items()))
        print(f"  evaluation, largest share of one run's time: {shares} (goal <= 3%)")
    return figures


if __name__ == "__main__":
    main()
