"""The command line: what the entry points, ``kdflow-predict`` and ``kdflow-end-orphans`` call.
Parse, run, say, exit.

Every body's outcome becomes a message and an exit status in one place, ``exit_status``:
0 done, 1 partly failed (the rest was done and logged), 2 bad input, 3 the tracking store does not
answer, 130 interrupted. Under ``mlflow run`` any failure of the job is ``mlflow run``'s exit 1.
"""

import argparse
import atexit
import contextlib
import gc
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import mlflow

from kdflow import config, liveness, predict, quiet, registry, runs, store


def _stop_with_parent() -> None:
    """Under ``mlflow run``, stop when that process is stopped: ``kill`` reaches it alone, and this
    job would otherwise train on unwatched and end FINISHED after its user stopped it."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="kdflow-parent-watch", daemon=True).start()


def exit_status(name: str, body, uses_store: bool = True) -> int:
    """Run an entry point's body and turn its outcome into a message and an exit status.

    A body that uses the tracking store gets it checked first, so that a store that does not
    answer fails in seconds, and set up (``store.prepare``), so that commands and trials started
    together on one SQLite file do not fail.
    """
    quiet.silence_libraries()
    # At exit the interpreter's last garbage collections walk every object TensorFlow, MLflow and
    # Ray made: after the work was done, 0.8-1.2 s in a sweep's driver and 1.8-2.1 s in a teacher's job,
    # measured on two cores, against 0.1-0.2 s with them frozen. Nothing left then needs a
    # collector (runs are ended and files closed by then; the memory goes back with the process),
    # so the objects are frozen out of those collections. Registered once, however often this runs.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    # `kill` and Ray stop workers with SIGTERM; treat it like Ctrl-C so the run ends KILLED.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if "MLFLOW_RUN_ID" in os.environ:
        _stop_with_parent()
    try:
        if uses_store:
            store.check_stores()
            store.prepare()
        body()
    except ValueError as error:
        print(f"kdflow {name}: error: {error}", file=sys.stderr)
        return 2
    except store.Unreachable as error:
        print(f"kdflow {name}: error: {error}", file=sys.stderr)
        return 3
    except runs.PartlyFailed as error:
        print(f"kdflow {name}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The run is recorded; `mlflow run` follows Ctrl-C with a SIGTERM, which would only cut the exit short.
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        print(f"kdflow {name}: interrupted; a run that had not finished is marked KILLED", file=sys.stderr)
        return 130
    return 0


def main(kind: str, argv: list[str]) -> int:
    """The teacher, student and distill entry points: one job in a tracked run."""

    def body():
        # Parsed inside the run, so a bad parameter ends the run FAILED with its error recorded.
        with runs.tracked_run(kind) as run:
            runs.run_job(kind, config.parse_args(kind, argv))
        registry.promote(run.info.run_id)  # Only now that the run has ended FINISHED.

    return exit_status(kind, body)


def sweep_main(argv: list[str]) -> int:
    """The sweep entry point: trials over a Ray cluster under one parent run; non-zero if any failed."""
    # Here, not above: importing Ray Tune would slow every other entry point.
    from kdflow import experiments, sweeps

    return exit_status("sweep", lambda: sweeps.run_sweep(experiments.parse_args(argv)))


def report_main(argv: list[str]) -> int:
    """The report entry point: the experiment's results table, as a run's artifacts."""

    def body():
        if argv:
            raise ValueError(f"report takes no parameters, got {' '.join(argv)}")
        runs.report()

    return exit_status("report", body)


def end_orphans_main(argv: list[str] | None = None) -> int:
    """``kdflow-end-orphans``: end FAILED the RUNNING kdflow runs whose process is gone, saying why."""
    parser = argparse.ArgumentParser(
        prog="kdflow-end-orphans",
        description="End FAILED the RUNNING kdflow runs whose process is gone (killed, or failed while the store was away).",
    )
    parser.add_argument("--experiment_id", action="append", help="only this experiment (repeatable; default: all)")
    arguments = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def body():
        ended = liveness.end_orphans(arguments.experiment_id)
        for run, reason in ended:
            print(f"ended {run.info.run_name} ({run.info.run_id}) FAILED: {reason}")
        print(f"{len(ended)} run(s) ended; RUNNING runs whose process may be alive are left as they are")

    return exit_status("end-orphans", body)


def _predict_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kdflow-predict", description="Classify digit images with a kdflow model.")
    parser.add_argument("images", nargs="+", help="PNG or JPEG files, .npy arrays, or directories of them")
    parser.add_argument("--model_uri", default=predict.DEFAULT_MODEL_URI, help="the model to use (default: %(default)s)")
    # Under `mlflow run` the answers are also kept as the run's predictions.json, for machines.
    parser.add_argument("--json", action="store_true", help="print one JSON object per answer")
    return parser.parse_args(argv)


def predict_main(argv: list[str] | None = None) -> int:
    """``kdflow-predict`` and the predict entry point: one answer per image file."""
    arguments = _predict_arguments(sys.argv[1:] if argv is None else argv)
    started_by_mlflow_run = "MLFLOW_RUN_ID" in os.environ

    # Outside `mlflow run` it only reads models: no store is made in whatever folder it runs in,
    # but one that a models:/ or runs:/ URI needs must answer (under `mlflow run`, exit_status checks).
    def body():
        if not started_by_mlflow_run and urllib.parse.urlsplit(arguments.model_uri).scheme in ("models", "runs"):
            store.check_stores()
        _predict(arguments)

    return exit_status("predict", body, uses_store=started_by_mlflow_run)


def _answer_line(answer: dict, as_json: bool) -> str:
    if as_json:
        return json.dumps(answer)
    if "error" in answer:
        return f"{answer['file']}: error: {answer['error']}"
    return f"{answer['file']}: {answer['digit']} (probability {answer['probability']:.3f})"


def _predict(arguments: argparse.Namespace) -> None:
    # Started by `mlflow run`, which opened a run for it: record the answers in that run.
    started_by_mlflow_run = "MLFLOW_RUN_ID" in os.environ
    with runs.tracked_run("predict") if started_by_mlflow_run else contextlib.nullcontext():
        files = predict.expand(arguments.images)
        quiet.import_tensorflow()
        model = predict.load_model(arguments.model_uri)
        count, failed = 0, []
        with tempfile.TemporaryDirectory() as folder:
            # Answers are printed, and recorded as one JSON list, as they come: none is held back.
            record_path = Path(folder) / "predictions.json"
            record = record_path.open("w", encoding="utf-8")
            record.write("[")
            try:
                for answer in predict.predict_files(model, files):
                    record.write(("," if count else "") + "\n" + json.dumps(answer))
                    count += 1
                    if "error" in answer:
                        failed.append(answer["file"])
                    print(_answer_line(answer, arguments.json))
            finally:
                # A complete JSON list, however the answers ended (Ctrl-C, an error), kept in the run.
                record.write("\n]\n")
                record.close()
                if started_by_mlflow_run:
                    runs.name_run("predict", f"Answers of `{arguments.model_uri}` for {len(files)} files: predictions.json.")
                    mlflow.log_artifact(str(record_path))
        if failed:
            # Each file that could not be read gave one error; a .npy file gives many answers.
            raise runs.PartlyFailed(f"{len(failed)} of {len(files)} files could not be read: {', '.join(failed)}")
