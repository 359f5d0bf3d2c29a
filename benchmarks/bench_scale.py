"""Scale: many short distillations on an N-node Ray cluster, tracked by a PostgreSQL-backed mlflow server.

Command (8 nodes, 200 trials; about 20 minutes on 2 cores, no GPU, 25 with --faults), from the
project root in the README's environment with Debian's PostgreSQL server installed
(`apt-get install postgresql`) and `pip install -e '.[postgres]'`:

    python benchmarks/bench_scale.py --nodes 8 --trials 200 [--faults] [--cold-trials 20]

Everything runs on this machine: a PostgreSQL cluster (scripts/postgres.py), `mlflow server` on it
with the artifact proxy, and a Ray cluster of N nodes of one CPU each (``ray.cluster_utils.Cluster``),
so N trials run at once on however many cores there are. The trials are distillations over
temperatures x loss weights x seeds (`sweep` with kinds=distill and teacher_temperature=5), each
from a teacher trained first by a sweep of its own; every sweep is the `sweep` entry point run
as a driver process against the cluster, as a user would run it.

It prints the wall time against the ideal (the trials' own run time / N slots), trials per minute,
per-trial orchestration overhead (slot time between one trial's run ending and the next one's
starting, p50 / p95; Ray Tune's reuse of warm workers on, and off for --cold-trials trials
side by side), the trial workers' tracking calls per second and their client-side latency p50 /
p99 (benchmarks/call_timer times every HTTP call of the cluster's Python processes), and a count
check. With --faults, one more sweep meets three faults in turn, and the count check runs after
each: a worker node removed; the driver suspended while a resume is tried (and refused: it still
exists), then killed and the sweep resumed; the mlflow server killed and restarted. The last
line is the summary, e.g.

    scale: backend=postgresql nodes=8 trials=200 finished=200 duplicates=0 running=0 missing_metric_steps=0 efficiency=0.87 overhead_p50_s=1.4

(finished: trials with exactly one FINISHED run; missing_metric_steps: evaluation steps absent
from a finished run's metric history; efficiency: ideal / actual wall time). Goal at 8 nodes and
200 trials: efficiency >= 0.85 and nothing lost. tests/test_scale.py runs a reduced version.
"""

import argparse
import heapq
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdflow import experiments, sweeps, tracking, trials  # noqa: E402
from scripts import postgres, servers  # noqa: E402

MLFLOW = str(Path(sys.executable).parent / "mlflow")
EXPERIMENT = "scale"
WEIGHTS = ("0.1", "0.3", "0.5", "0.7", "0.9")
# Each sweep has seeds of its own, so that none reuses another's runs; the teachers of all of them
# are trained first, by one sweep, and every sweep lives in one experiment, as a user's would.
SEEDS = {"main": (12, 13), "cold": (17,), "faults": (14,)}
# Short trials: the point is the cost around a trial, not the trial. Each evaluation is a metric step.
STEPS, EVAL_EVERY = 60, 20
RECIPE = ("--num_steps", str(STEPS), "--eval_every", str(EVAL_EVERY), "--teacher_temperature", "5")
COLD = "import sys; from kdflow import cli, trials; trials.REUSE_WORKERS = False; sys.exit(cli.sweep_main(sys.argv[1:]))"


def grid(trials: int, seeds: tuple[int, ...]) -> list[str]:
    """Sweep arguments for ``trials`` distillations: temperatures 1..n x five loss weights x the seeds."""
    per_temperature = len(WEIGHTS) * len(seeds)
    if trials < per_temperature or trials % per_temperature:
        raise ValueError(f"trials: {trials} is not a multiple of {per_temperature} (loss weights x seeds)")
    temperatures = ",".join(str(t) for t in range(1, trials // per_temperature + 1))
    return ["--kinds", "distill", "--temperature", temperatures, "--loss", "weighted", "--hard_label_weight", ",".join(WEIGHTS),
            "--seed", ",".join(map(str, seeds)), *RECIPE]


def planned_names(arguments: list[str]) -> set[str]:
    """The sweep's distillations (the teachers it plans too were trained, and are reused, beforehand)."""
    return {trial.name for trial in sweeps.plan(experiments.parse_args(arguments)) if trial.kind == "distill"}


class TrackingServer:
    """`mlflow server` on the PostgreSQL backend with the artifact proxy; it can be killed and restarted."""

    def __init__(self, backend_uri: str, folder: Path, port: int):
        self.command = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", backend_uri,
                        "--artifacts-destination", str(folder / "artifacts")]
        self.uri, self.log = f"http://127.0.0.1:{port}", folder / "server.log"
        self.process = None

    def start(self) -> None:
        # A session of its own, so that killing it takes its worker processes too, as a crash would.
        self.process = subprocess.Popen(self.command, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            servers.wait_until_answers(f"{self.uri}/health", self.process, timeout=300)
        except RuntimeError as error:
            raise RuntimeError(f"mlflow server did not start ({error}):\n{self.log.read_text()[-3000:]}") from None

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextmanager
def ray_cluster(nodes: int):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


@dataclass
class Sweep:
    """One sweep in the benchmark's experiment: its driver processes, and its wall time from first start to last exit."""
    name: str
    arguments: list[str]
    address: str
    logs: Path  # a folder for the drivers' output
    cold: bool = False

    def start(self, resume: bool = False) -> subprocess.Popen:
        entry = ["-c", COLD] if self.cold else [str(ROOT / "entrypoints" / "sweep.py")]
        command = [sys.executable, *entry, "--address", self.address, *self.arguments, "--resume", str(resume).lower()]
        env = {**os.environ, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}
        self.log = self.logs / f"{len(list(self.logs.iterdir())):02d}-{self.name}.log"
        return subprocess.Popen(command, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def run(self, fault=None) -> float:
        """Run to the end (``fault(sweep, driver)`` may act meanwhile and return a new driver); wall seconds."""
        started = time.perf_counter()
        driver = self.start()
        while driver.poll() is None:
            with suppress(subprocess.TimeoutExpired):
                driver.wait(timeout=2)  # back the moment the driver exits, so that its end is timed exactly
            if fault is not None:
                driver, fault = fault(self, driver)
        if driver.returncode != 0:
            raise RuntimeError(f"the {self.name} sweep exited {driver.returncode}: {self.log.read_text()[-3000:]}")
        return time.perf_counter() - started


def experiment_runs(status: str = "") -> list:
    experiment_id = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    return mlflow.search_runs(experiment_ids=[experiment_id], output_format="list",
                              filter_string=f"attributes.status = '{status}'" if status else "")


def finished_runs(names: set[str]) -> list:
    return [run for run in experiment_runs("FINISHED") if run.info.run_name in names]


def count_check(names: set[str]) -> dict[str, int]:
    """What the store holds for a sweep's planned trials: nothing lost, nothing twice, nothing left running."""
    every_run = experiment_runs()
    finished = [run for run in every_run if run.info.status == "FINISHED" and run.info.run_name in names]
    per_name = {name: sum(run.info.run_name == name for run in finished) for name in names}
    client, missing = mlflow.MlflowClient(), 0
    expected = set(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    for run in finished:
        for metric in ("train_loss", "validation_loss", "validation_accuracy"):
            missing += len(expected - {point.step for point in client.get_metric_history(run.info.run_id, metric)})
    return {
        "finished": sum(count == 1 for count in per_name.values()),
        "duplicates": sum(count > 1 for count in per_name.values()),
        "running": sum(run.info.status == "RUNNING" for run in every_run),
        "missing_metric_steps": missing,
    }


def slot_gaps(runs: list, slots: int) -> list[float]:
    """Seconds each slot spent between one trial's run ending and the next one's starting.

    Runs are taken in start order, each by the slot free the longest (the first ``slots`` runs
    start the slots, so Ray's start-up is not counted as a per-trial cost).
    """
    free_at, gaps = [], []
    for run in sorted(runs, key=lambda run: run.info.start_time):
        if len(free_at) == slots:
            gaps.append((run.info.start_time - heapq.heappop(free_at)) / 1000)
        heapq.heappush(free_at, run.info.end_time)
    return gaps


def node_first_trials(runs: list, started: float) -> list[float]:
    """Seconds from the driver's start to each node's first trial run, earliest first."""
    first = {}
    for run in runs:
        node = run.data.tags[trials.NODE_TAG]
        first[node] = min(first.get(node, run.info.start_time), run.info.start_time)
    return sorted(start / 1000 - started for start in first.values())


def run_seconds(runs: list) -> float:
    return sum((run.info.end_time - run.info.start_time) / 1000 for run in runs)


def calls_between(folder: Path, started: float, ended: float) -> list[tuple[float, float, str, str]]:
    """The tracking calls made in a time window, from benchmarks/call_timer: (start, seconds, method, path) each."""
    calls = []
    for log in folder.glob("*.tsv"):
        for line in log.read_text().splitlines():
            at, seconds, method, path = line.split("\t")
            if started <= float(at) <= ended:
                calls.append((float(at), float(seconds), method, path))
    return calls


def call_kind(method: str, path: str) -> str:
    """A call's kind: its method and path, an artifact by its file name."""
    return f"{method} {path.rsplit('/', 1)[-1] if 'mlflow-artifacts' in path else path.split('/mlflow/', 1)[-1]}"


def call_kinds(calls: list) -> dict[str, int]:
    """How many calls of each kind."""
    kinds = {}
    for _, _, method, path in calls:
        what = call_kind(method, path)
        kinds[what] = kinds.get(what, 0) + 1
    return kinds


def call_spans(calls: list, since: float) -> dict[str, tuple[float, float]]:
    """For each kind of call, when its first and its last began, in seconds after ``since``, in
    the order the kinds first appear: where a phase's time goes."""
    spans = {}
    for at, _, method, path in sorted(calls):
        what = call_kind(method, path)
        spans[what] = (spans.get(what, (at - since,))[0], at - since)
    return spans


def percentile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1] if len(values) > 1 else values[0]


def train_teachers(seeds: list[int], address: str, logs: Path) -> None:
    arguments = ["--kinds", "teacher", "--temperature", "5", "--seed", ",".join(map(str, seeds)), *RECIPE]
    Sweep("teachers", arguments, address, logs).run()


def faults_run(trials: int, cluster, server: TrackingServer, logs: Path) -> dict[str, dict]:
    """One sweep meeting the faults in turn, the first once a quarter of its trials are finished,
    the second at half, the third at three quarters; the count check after each.

    The check after a fault is taken when the next one has struck (after the last, once the sweep
    is over): by then the sweep has come through it and finished a quarter more. Mid-sweep, trials
    are running by design, so only ``finished`` (so far), ``duplicates`` and ``missing_metric_steps``
    count; the last check is the whole count check.
    """
    arguments = grid(trials, SEEDS["faults"])
    names = planned_names(arguments)
    checks, started = {}, time.perf_counter()

    def remove_node(sweep, driver):
        cluster.remove_node(next(iter(cluster.worker_nodes)), allow_graceful=False)
        return driver

    def restart_server(sweep, driver):
        server.kill()
        time.sleep(5)  # Down for long enough that the trials' calls meet a dead server.
        server.start()
        return driver

    def kill_driver(sweep, driver):
        # While its driver lives, a resume is refused: it would train the trials twice. The driver
        # is suspended (as Ctrl-Z would) while the resume is tried, so that the sweep cannot finish
        # meanwhile; a suspended process still exists, and a resume on this machine sees that.
        live_log = sweep.log
        driver.send_signal(signal.SIGSTOP)
        suspended = time.perf_counter()
        try:
            refused = sweep.start(resume=True)
            refused_code = refused.wait()
        finally:
            driver.send_signal(signal.SIGCONT)
        print(f"  kill_driver: the driver was suspended for {time.perf_counter() - suspended:.1f} s while a resume "
              f"was tried (exit {refused_code})", flush=True)
        if driver.poll() is not None:
            raise RuntimeError(f"the {sweep.name} sweep ended (exit {driver.returncode}) before the kill_driver fault "
                               f"could strike: give it more trials. Its log: {live_log.read_text()[-2000:]}")
        if refused_code != 2 or "is still running" not in sweep.log.read_text():
            statuses = [(run.info.run_id, run.info.status, run.data.tags.get(tracking.ERROR_TAG, ""))
                        for run in experiment_runs() if run.data.tags.get(tracking.KIND_TAG) == "sweep"]
            raise RuntimeError(f"resuming the live {sweep.name} sweep was not refused (exit {refused_code}); "
                               f"the sweep runs: {statuses}; the resume's log: {sweep.log.read_text()[-3000:]}")
        driver.kill()
        driver.wait()  # Its process is gone, which a resume on this machine sees at once (kdflow.liveness).
        return sweep.start(resume=True)

    def report(fault: str, counts: dict) -> None:
        checks[fault] = counts
        print(f"  after {fault:15s} checked at {time.perf_counter() - started:6.1f} s: "
              + " ".join(f"{name}={value}" for name, value in counts.items()), flush=True)

    # The driver is killed at half way, so that the refused resume meets a sweep with work left; a
    # server restart needs only trials in flight.
    faults, struck = [remove_node, kill_driver, restart_server], []

    def next_fault(sweep, driver):
        try:
            done = len(finished_runs(names))
        except Exception:  # The store may be the thing that is down.
            return driver, next_fault
        if done < len(names) * (len(struck) + 1) / (len(faults) + 1):
            return driver, next_fault
        act = faults[len(struck)]
        driver = act(sweep, driver)  # Strike first, while trials are in flight; then check the last fault.
        if struck:
            counts = count_check(names)
            del counts["running"]
            report(struck[-1], counts)
        struck.append(act.__name__)
        return driver, next_fault if len(struck) < len(faults) else None

    Sweep("faults", arguments, cluster.address, logs).run(next_fault)
    if len(struck) < len(faults):
        raise RuntimeError(f"the sweep ended before every fault struck ({', '.join(struck)}): give it more trials")
    report(struck[-1], count_check(names))
    return checks


def cpu_description() -> str:
    info = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} cores, {'with' if 'avx512_bf16' in info else 'without'} AVX512_BF16"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--cold-trials", type=int, default=20, help="trials run with warm workers off, to compare (0: none)")
    parser.add_argument("--faults", action="store_true", help="then a sweep meeting three faults in turn")
    parser.add_argument("--fault-trials", type=int, default=40, help="trials in the fault sweep")
    arguments = parser.parse_args(argv)
    arguments_grid = grid(arguments.trials, SEEDS["main"])  # Checked before anything starts.
    print(f"command: python benchmarks/bench_scale.py {' '.join(argv if argv is not None else sys.argv[1:])}", flush=True)
    print(f"machine: {cpu_description()}", flush=True)
    with scale_setup(arguments.nodes) as (folder, server, cluster):
        return measure(arguments, arguments_grid, cluster, server, folder)


@contextmanager
def scale_setup(nodes: int):
    """The benchmark's tracking server on PostgreSQL, its experiment and a Ray cluster of ``nodes``
    nodes; yields (folder, server, cluster). If what runs on them fails, each driver's last lines
    and the trial workers' stacks are printed, since the folder goes with the benchmark."""
    with postgres_tracking_server("kdflow-scale-") as (folder, server):
        (folder / "logs").mkdir()
        with ray_cluster(nodes) as cluster:
            mlflow.MlflowClient().create_experiment(EXPERIMENT)
            try:
                yield folder, server, cluster
            except BaseException:
                print_driver_logs(folder / "logs")
                print_trial_stacks()
                raise


@contextmanager
def postgres_tracking_server(prefix: str):
    """A folder under /tmp, a PostgreSQL cluster in it and `mlflow server` on that, as the tracking
    server of this process and of every Python process it starts, each of which times its HTTP
    calls (benchmarks/call_timer) into the folder's ``calls``; yields (folder, server)."""
    # A folder under /tmp: PostgreSQL runs as its own user and must reach it.
    with tempfile.TemporaryDirectory(prefix=prefix, dir="/tmp") as temporary:
        folder = Path(temporary)
        folder.chmod(0o755)  # Searchable by the postgres user (scripts/postgres.py).
        (folder / "calls").mkdir()
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent / "call_timer"),
                                                                  os.environ.get("PYTHONPATH")]))
        os.environ["KDFLOW_BENCH_CALL_LOG"] = str(folder / "calls")
        with postgres.running(folder / "postgres", servers.free_port()) as backend_uri:
            server = TrackingServer(backend_uri, folder, servers.free_port())
            server.start()
            os.environ["MLFLOW_TRACKING_URI"] = server.uri
            try:
                yield folder, server
            finally:
                server.kill()


def print_driver_logs(logs: Path, lines: int = 40) -> None:
    """The last lines of each driver's log, without the trials' own lines and Ray Tune's tables."""
    for log in sorted(logs.iterdir()):
        own = [line for line in log.read_text(errors="replace").splitlines()
               if not line.startswith(("(", "\x1b[36m(", "│", "├", "╭", "╰"))]
        print(f"--- {log.name}, last {lines} of its own lines:", *own[-lines:], sep="\n", flush=True)


def print_trial_stacks() -> None:
    """Where each sweep driver and Ray Tune trial worker on this machine is (py-spy), for a sweep
    that failed or never ended: a trial waiting for ever shows what it waits on."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        print("(py-spy is not installed here: no stacks of the trial workers)", flush=True)
        return
    for process in Path("/proc").iterdir():
        try:
            command = (process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # Not a process, or one that has just ended.
            continue
        if command.startswith("ray::ImplicitFunc") or "entrypoints/sweep.py" in command:
            dump = subprocess.run([py_spy, "dump", "--pid", process.name], capture_output=True, text=True, timeout=60)
            print(f"--- stacks of process {process.name} ({command[:80].strip()}):", (dump.stdout or dump.stderr)[-6000:],
                  sep="\n", flush=True)


def measure(arguments, arguments_grid, cluster, server, folder) -> dict:
    address, slots, logs = cluster.address, arguments.nodes, folder / "logs"
    sweeps_run = ["main"] + ["cold"] * bool(arguments.cold_trials) + ["faults"] * arguments.faults
    train_teachers(sorted(seed for name in sweeps_run for seed in SEEDS[name]), address, logs)
    cold_gaps = []
    if arguments.cold_trials:
        cold_grid = grid(arguments.cold_trials, SEEDS["cold"])
        Sweep("cold", cold_grid, address, logs, cold=True).run()
        cold_gaps = slot_gaps(finished_runs(planned_names(cold_grid)), slots)

    started = time.time()
    wall = Sweep("main", arguments_grid, address, logs).run()
    names = planned_names(arguments_grid)
    runs = finished_runs(names)
    counts = count_check(names)
    ideal = run_seconds(runs) / slots
    gaps = slot_gaps(runs, slots)
    latencies = [seconds for _, seconds, *_ in calls_between(folder / "calls", started, started + wall)]

    print(f"backend: PostgreSQL via mlflow server (artifact proxy); Ray: {slots} nodes x 1 CPU, one trial per node")
    print(f"warm workers: {arguments.trials} trials in {wall:.1f} s against an ideal {ideal:.1f} s "
          f"(their runs' {run_seconds(runs):.0f} s / {slots} slots): efficiency {ideal / wall:.2f} (goal >= 0.85), "
          f"{60 * arguments.trials / wall:.1f} trials/min")
    first_start = min(run.info.start_time for run in runs) / 1000
    last_end = max(run.info.end_time for run in runs) / 1000
    print(f"driver: {first_start - started:.1f} s from its start to the first trial's run (Ray, lookups, a worker "
          f"importing TensorFlow), {started + wall - last_end:.1f} s from the last trial's end to its exit")
    node_starts = node_first_trials(runs, started)
    print(f"start per node: each node's first trial began {node_starts[0]:.1f} to {node_starts[-1]:.1f} s after the "
          f"driver's start ({len(node_starts)} nodes): the start is paid once for all nodes, not once per node "
          f"(goal: the last node's first trial within half a start of the first node's)")
    end_calls = calls_between(folder / "calls", last_end, started + wall)
    starts = [at for at, *_ in end_calls] or [last_end]
    kinds = sorted(call_kinds(end_calls).items(), key=lambda kind: -kind[1])
    print(f"the driver's end: {len(end_calls)} tracking calls from {min(starts) - last_end:.1f} s to {max(starts) - last_end:.1f} s "
          "after the last trial's end: " + ", ".join(f"{n} {what}" for what, n in kinds))
    print("  when, in seconds after the last trial's end (first to last call of each kind): " + ", ".join(
        f"{what} {span[0]:.1f}-{span[1]:.1f}" for what, span in call_spans(end_calls, last_end).items()))
    print(f"per-trial overhead, warm workers: p50 {statistics.median(gaps):.2f} s, p95 {percentile(gaps, 0.95):.2f} s "
          f"(goal: p50 <= 2 s)")
    if cold_gaps:
        print(f"per-trial overhead, cold workers (reuse_actors off, {arguments.cold_trials} trials): "
              f"p50 {statistics.median(cold_gaps):.2f} s, p95 {percentile(cold_gaps, 0.95):.2f} s")
    print(f"tracking: {len(latencies)} HTTP calls from the drivers and trial workers, {len(latencies) / wall:.1f}/s; "
          f"client-side latency p50 {1000 * statistics.median(latencies):.0f} ms, p99 {1000 * percentile(latencies, 0.99):.0f} ms")
    print("count check: " + " ".join(f"{name}={value}" for name, value in counts.items()), flush=True)
    faults = {}
    if arguments.faults:
        print(f"faults, in turn in one sweep of {arguments.fault_trials} trials (at 1/4, 1/2 and 3/4 of them finished), "
              "the count check after each (mid-sweep: the trials finished so far):")
        faults = faults_run(arguments.fault_trials, cluster, server, logs)
    summary = {"backend": "postgresql", "nodes": slots, "trials": arguments.trials, **counts,
               "efficiency": f"{ideal / wall:.2f}", "overhead_p50_s": f"{statistics.median(gaps):.1f}",
               "start_s": f"{first_start - started:.1f}", "node_starts_s": f"{node_starts[0]:.1f}-{node_starts[-1]:.1f}",
               "end_s": f"{started + wall - last_end:.1f}"}
    print("scale: " + " ".join(f"{name}={value}" for name, value in summary.items()), flush=True)
    return {**summary, "faults": faults}


if __name__ == "__main__":
    main()
