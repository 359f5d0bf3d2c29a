"""Growth: what one distillation costs besides training as its experiment fills with finished runs.

Command (sizes 100, 1,000 and 10,000; about 25 minutes on 2 cores, no GPU), from the project root
in the README's environment with Debian's PostgreSQL server installed (`apt-get install
postgresql`) and `pip install -e '.[postgres]'`:

    python benchmarks/bench_growth.py --sizes 100,1000,10000 --repeats 3

Everything runs on this machine: a PostgreSQL cluster (scripts/postgres.py) and `mlflow server`
on it with the artifact proxy (bench_scale.postgres_tracking_server). One experiment is filled,
through the client as a sweep would fill it, with finished distillations of other rows of the
same table (loss=weighted at a thousand loss weights, five temperatures, two seeds), each with
its parameters, tags, metrics and a registered student version. At each size the same short
distillation (kdtf's row, T=5, its teacher trained once at the start and reused) runs `repeats`
times as the `distill` entry point's process, each run deleted after it is measured so that the
next one trains again. Beside it, a baseline experiment holds the smallest size throughout: at
each size its own run is measured after each of the growing experiment's, so that both meet the
machine's speed of the moment (on the shared machine it drifted 13% within ten minutes on
2026-12-06, more than the growth measured) and the server's state. The registry is shared, so the
baseline's runs meet its growth too; the calls whose seconds grew most (below) show it. The
figures per size are medians over the repeats:

- ``outside_s``: the process's wall time less its training, evaluation and MLflow evaluation
  (the ``train_seconds``, ``evaluation_seconds`` and ``model_evaluation_seconds`` metrics): start-up,
  data, the teacher's logits, tracking, the results table and the registry;
- ``calls``: its HTTP calls to the tracking server (benchmarks/call_timer), and among them
  ``run_searches`` and ``version_searches``; ``calls_s``, their seconds (client-side), and at the
  end the five calls whose seconds grew most from the smallest size to the largest;
- ``baseline_outside_s``: the same distillation's ``outside_s`` in the baseline experiment,
  measured beside it;
- ``table_s`` and ``table_runs``: regenerating the run's own results table in this process
  (``results.regenerate`` with the run as anchor), and the runs its searches answered with;
  ``report_s``, the whole experiment's table (the ``report`` entry point's) for comparison.

The last line gives the growth from the smallest size to the largest: ``outside_x`` is the largest
size's ``outside_s`` against the baseline's measured beside it; ``calls_x`` and ``table_x``
compare the sizes directly (counts do not drift, and the table's seconds are read in this process).

Goal: ``outside_x`` and ``calls_x`` at most 1.2 from 100 to 10,000 runs. tests/test_growth.py runs
a reduced version on a SQLite file, with nothing trained.
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_scale import cpu_description, postgres_tracking_server  # noqa: E402
from kdflow import liveness, quiet, registry, results, tracking  # noqa: E402
from kdflow.config import Config  # noqa: E402

EXPERIMENT, BASELINE = "growth", "growth-baseline"
STEPS, EVAL_EVERY = 40, 20
MEASURED = ["--num_steps", str(STEPS), "--eval_every", str(EVAL_EVERY), "--temperature", "5", "--seed", "12"]
# The filling runs: rows of their own (a loss weight each), at these temperatures and seeds.
TEMPERATURES, SEEDS = (1.0, 2.0, 3.0, 4.0, 5.0), (12, 13)
FILL_WRITERS = 8  # Runs written at once: the server serves several clients, as it does a sweep's trials.


def log_finished_distill(client, experiment_id: str, config: Config, name: str, accuracy: float, with_version: bool) -> str:
    """A finished distillation as the entry point leaves it, without its artifacts: parameters,
    tags (kind, code version, canonical parameters, run key), metrics at every evaluation, FINISHED,
    and (``with_version``) its registered student version with its champion alias tags; its id."""
    params = config.params("distill")
    tags = {tracking.KIND_TAG: "distill", tracking.CODE_VERSION_TAG: tracking.code_version(),
            tracking.PARAMS_TAG: json.dumps(params, sort_keys=True), tracking.RUN_KEY_TAG: name, "mlflow.runName": name}
    run = client.create_run(experiment_id, tags=tags)
    now = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(metric, value, now, step)
               for step in range(config.eval_every, config.num_steps + 1, config.eval_every)
               for metric, value in (("validation_accuracy", accuracy), ("train_loss", 0.5), ("validation_loss", 0.5))]
    metrics += [mlflow.entities.Metric(metric, accuracy, now, 0) for metric in ("test_accuracy", "accuracy_score")]
    client.log_batch(run.info.run_id, metrics=metrics, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    if with_version:
        client.create_model_version(registry.registered_name("distill", config), f"{run.info.artifact_uri}/model",
                                    run.info.run_id, tags={registry.ALIAS_TAG: registry.champion_alias("distill", config),
                                                           registry.VALIDATION_ACCURACY_TAG: str(accuracy)})
    return run.info.run_id


def fill_run(client, experiment_id: str, index: int, precision: str, with_version: bool) -> None:
    """The filling's run ``index``: its loss weight's row, at one of the temperatures and seeds."""
    weight, rest = divmod(index, len(TEMPERATURES) * len(SEEDS))
    config = Config(num_steps=STEPS, eval_every=EVAL_EVERY, loss="weighted", hard_label_weight=round((weight + 1) / 1e4, 4),
                    temperature=TEMPERATURES[rest // len(SEEDS)], seed=SEEDS[rest % len(SEEDS)], precision=precision)
    log_finished_distill(client, experiment_id, config, f"fill-{index:08d}", 0.8 + (index % 97) / 1000, with_version)


def fill(experiment_id: str, start: int, stop: int, precision: str, with_version: bool) -> float:
    """Runs ``start`` to ``stop`` of the filling; returns the seconds it took."""
    client = mlflow.MlflowClient()
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(FILL_WRITERS) as pool:
        for future in [pool.submit(fill_run, client, experiment_id, index, precision, with_version) for index in range(start, stop)]:
            future.result()
    return time.perf_counter() - started


class CountingClient(mlflow.MlflowClient):
    """The client, counting its searches and the runs they answer with (searches run in threads)."""

    searches = answered = 0
    counting = threading.Lock()

    def search_runs(self, *args, **kwargs):
        page = super().search_runs(*args, **kwargs)
        with self.counting:
            self.searches, self.answered = self.searches + 1, self.answered + len(page)
        return page


def table_cost(experiment_id: str, anchor_run_id: str) -> dict:
    """Seconds and runs read to regenerate one run's own tables, and the whole experiment's."""
    spy = CountingClient()
    with tempfile.TemporaryDirectory(prefix="growth-table-") as folder:
        started = time.perf_counter()
        results.regenerate(experiment_id, Path(folder) / "own", [spy.get_run(anchor_run_id)], client=spy)
        own_seconds = time.perf_counter() - started
        started = time.perf_counter()
        results.regenerate(experiment_id, Path(folder) / "report")
        report_seconds = time.perf_counter() - started
    return {"table_s": own_seconds, "table_searches": spy.searches, "table_runs": spy.answered, "report_s": report_seconds}


def measure_run(experiment_id: str, calls: Path, environment: dict, tables: bool = True) -> dict:
    """One distillation as the entry point's process in the experiment that ``environment`` names;
    its costs besides training (with ``tables``, also ``table_cost``), then it is deleted."""
    started = time.perf_counter()
    process = subprocess.run([sys.executable, str(ROOT / "entrypoints" / "distill.py"), *MEASURED], env=environment,
                             capture_output=True, text=True)
    wall = time.perf_counter() - started
    if process.returncode:
        raise RuntimeError(f"the measured distillation failed:\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([experiment_id], "tags.`mlflow.runName` LIKE 'distill-%' and attributes.status = 'FINISHED'")
    metrics = run.data.metrics
    inside = metrics["train_seconds"] + metrics["evaluation_seconds"] + metrics["model_evaluation_seconds"]
    log = calls / f"{process_pid(run)}.tsv"
    lines = [line.split("\t") for line in log.read_text().splitlines()]
    paths = Counter(path.strip() for _, _, _, path in lines)
    seconds_by_path = Counter()
    for _, seconds, _, path in lines:
        seconds_by_path[path.strip()] += float(seconds)
    figures = {"wall_s": wall, "outside_s": wall - inside, "calls": sum(paths.values()),
               "calls_s": sum(seconds_by_path.values()), "run_searches": paths["/api/2.0/mlflow/runs/search"],
               "version_searches": paths["/api/2.0/mlflow/model-versions/search"], "seconds_by_path": seconds_by_path}
    if tables:
        figures |= table_cost(experiment_id, run.info.run_id)
    client.delete_run(run.info.run_id)  # So that the next repeat trains again, and is the row's one run.
    return figures


def process_pid(run) -> int:
    """The process that ran a run, as the run names it (kdflow.liveness)."""
    return json.loads(run.data.tags[liveness.PROCESS_TAG])["pid"]


def median_figures(repeats: list[dict]) -> dict:
    """Each figure's median over the repeats; for ``seconds_by_path``, each path's median seconds."""
    medians = {name: statistics.median(figures[name] for figures in repeats) for name in repeats[0] if name != "seconds_by_path"}
    paths = set().union(*(figures["seconds_by_path"] for figures in repeats))
    return medians | {"seconds_by_path": {path: statistics.median(figures["seconds_by_path"][path] for figures in repeats)
                                          for path in paths}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="finished runs in the experiment at each measurement")
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args(argv)
    sizes = sorted(int(size) for size in arguments.sizes.split(","))
    print(f"command: python benchmarks/bench_growth.py {' '.join(argv if argv is not None else sys.argv[1:])}", flush=True)
    print(f"machine: {cpu_description()}", flush=True)
    quiet.silence_libraries()  # MLflow's line per filled run.
    with postgres_tracking_server("kdflow-growth-") as (folder, _):
        return measure(sizes, arguments.repeats, folder)


def measure(sizes: list[int], repeats: int, folder: Path) -> dict:
    client = mlflow.MlflowClient()
    experiment_id, baseline_id = client.create_experiment(EXPERIMENT), client.create_experiment(BASELINE)
    # The teacher is an `mlflow run` of the project, started with the `python` on PATH: this one.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    environment, baseline = ({**os.environ, "PATH": path, "MLFLOW_EXPERIMENT_NAME": name} for name in (EXPERIMENT, BASELINE))
    # Each experiment's teacher, trained once; the first distillations also warm every cache.
    measure_run(experiment_id, folder / "calls", environment)
    measure_run(baseline_id, folder / "calls", baseline, tables=False)
    quiet.import_tensorflow()  # Resolving "auto" precision asks TensorFlow; its start-up lines held back.
    precision = Config().resolved().precision
    # The baseline's runs are the filling's own first ones, as the growing experiment's are.
    fill(baseline_id, 0, sizes[0], precision, with_version=True)
    report, filled = {}, 0
    for size in sizes:
        fill_seconds = fill(experiment_id, filled, size, precision, with_version=True)
        print(f"filled {size - filled} runs in {fill_seconds:.0f} s", flush=True)
        filled = size
        measured, beside = [], []
        for _ in range(repeats):
            measured.append(measure_run(experiment_id, folder / "calls", environment))
            beside.append(measure_run(baseline_id, folder / "calls", baseline, tables=False)["outside_s"])
        report[size] = median_figures(measured) | {"baseline_outside_s": statistics.median(beside)}
        print(f"runs={size} " + " ".join(f"{name}={value:.2f}" if isinstance(value, float) else f"{name}={value}"
                                          for name, value in report[size].items() if name != "seconds_by_path"), flush=True)
    smallest, largest = report[sizes[0]], report[sizes[-1]]
    # Where the time outside training grew: the calls whose seconds grew most.
    growth = {path: largest["seconds_by_path"].get(path, 0.0) - smallest["seconds_by_path"].get(path, 0.0)
              for path in set(smallest["seconds_by_path"]) | set(largest["seconds_by_path"])}
    for path in sorted(growth, key=growth.get, reverse=True)[:5]:
        print(f"  {path}: {smallest['seconds_by_path'].get(path, 0.0):.2f} -> {largest['seconds_by_path'].get(path, 0.0):.2f} s",
              flush=True)
    growth_x = ratios(report)
    print(f"growth: sizes={sizes[0]},{sizes[-1]} outside_x={growth_x['outside_x']:.2f} calls_x={growth_x['calls_x']:.2f} "
          f"table_x={growth_x['table_x']:.2f} table_runs={smallest['table_runs']},{largest['table_runs']}", flush=True)
    return report


def ratios(report: dict) -> dict[str, float]:
    """The growth from the smallest size of ``measure``'s report to the largest: ``outside_x`` against
    the baseline measured beside the largest size, ``calls_x`` and ``table_x`` size to size."""
    smallest, largest = report[min(report)], report[max(report)]
    return {"outside_x": largest["outside_s"] / largest["baseline_outside_s"],
            "calls_x": largest["calls"] / smallest["calls"], "table_x": largest["table_s"] / smallest["table_s"]}


if __name__ == "__main__":
    main()
