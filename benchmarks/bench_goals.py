"""The cost goals side by side, from one run: each benchmark in turn, then a table of goal and figure.

Command (30 to 70 minutes on 2 cores, no GPU), from the project root in the README's environment
with Debian's PostgreSQL server installed (`apt-get install postgresql`), as bench_growth and
bench_scale need:

    python benchmarks/bench_goals.py

Each benchmark runs as its own documented command does, in a process of its own (they set the
tracking URI and their call logs in their environment), one after another so that none measures
beside another: bench_growth (a run's cost at 100, 1,000 and 10,000 finished runs), bench_scale
(8 nodes, 200 trials: the sweep's start per node and its end), bench_asha, bench_reproduction
(the teachers' time outside training, and tracking plus orchestration) and bench_sweep (two slots
against one). Their own output comes first; the table last.
"""

import multiprocessing
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_asha, bench_growth, bench_reproduction, bench_scale, bench_sweep  # noqa: E402

RUNS = [  # (benchmark, its arguments): each as its documented command runs it
    (bench_growth, ["--sizes", "100,1000,10000", "--repeats", "3"]),
    (bench_scale, ["--nodes", "8", "--trials", "200", "--cold-trials", "0"]),
    (bench_asha, None),
    (bench_reproduction, []),
    (bench_sweep, None),
]


def run_apart(module, argv):
    """The benchmark's ``main`` in a new process: what it returns."""
    print(f"\n=== {Path(module.__file__).name} {' '.join(argv or [])}", flush=True)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(module.main, () if argv is None else (argv,))


def rows(figures: dict) -> list[tuple[str, str, str, bool]]:
    """(goal, its target, the figure measured, met) per goal of this run."""
    growth = figures["bench_growth"]
    smallest, largest = growth[min(growth)], growth[max(growth)]
    growth_x = bench_growth.ratios(growth)
    outside_x, calls_x = growth_x["outside_x"], growth_x["calls_x"]
    scale = figures["bench_scale"]
    first_node, last_node = (float(seconds) for seconds in scale["node_starts_s"].split("-"))
    asha, reproduction = figures["bench_asha"], figures["bench_reproduction"]
    speed_up = figures["bench_sweep"]["speed_up"]
    return [
        ("a distillation's time outside training, 100 -> 10,000 runs in its experiment", "<= 1.2x",
         f"{outside_x:.2f}x ({largest['baseline_outside_s']:.1f} s at {min(growth):,} runs beside "
         f"{largest['outside_s']:.1f} s at {max(growth):,})", outside_x <= 1.2),
        ("its tracking calls, 100 -> 10,000 runs", "<= 1.2x",
         f"{calls_x:.2f}x ({smallest['calls']:.0f} -> {largest['calls']:.0f})", calls_x <= 1.2),
        ("a sweep's end at 200 trials (8 nodes)", "<= 10 s", f"{scale['end_s']} s", float(scale["end_s"]) <= 10),
        ("its start, paid once for all nodes: last node's first trial after the first node's", "<= half a start",
         f"{last_node - first_node:.1f} s (start {first_node:.1f} s)", last_node - first_node <= first_node / 2),
        ("ASHA against the grid run to the end", ">= 30% less wall time", f"{100 * asha['saved']:.0f}% less",
         asha["saved"] >= 0.3),
        ("ASHA's best distillation", "the same", "the same" if asha["same_best"] else "another", asha["same_best"]),
        ("ASHA's workers (2 slots)", "warm through stops: 2", str(asha["workers"]), asha["workers"] <= os.cpu_count()),
        ("a reproduction teacher's time outside training, evaluation (MLflow's too) and logits", "median <= 3 s",
         f"{reproduction['teacher_outside_median_s']:.1f} s ({reproduction['teacher_outside_median_with_evaluation_s']:.1f} s "
         "with MLflow's evaluation outside)", reproduction["teacher_outside_median_s"] <= 3),
        ("tracking + orchestration in the reproduction", "<= 4% of slot time",
         f"{100 * reproduction['overhead_share']:.1f}% ({100 * reproduction['overhead_share_with_evaluation']:.1f}% "
         "with MLflow's evaluation as tracking)", reproduction["overhead_share"] <= 0.04),
        ("bench_sweep: two slots against one", ">= 1.6x", f"{speed_up:.2f}x", speed_up >= 1.6),
    ]


def main() -> None:
    print("command: python benchmarks/bench_goals.py", flush=True)
    figures = {Path(module.__file__).stem: run_apart(module, argv) for module, argv in RUNS}
    print(f"\n| goal | target | measured | met |\n|---|---|---|---|")
    for goal, target, measured, met in rows(figures):
        print(f"| {goal} | {target} | {measured} | {'yes' if met else 'no'} |")


if __name__ == "__main__":
    main()
