"""The MLflow store as training sees it: what a run records, its reuse key, and finding a finished run.

Everything here decides what is trained and stored, so it is part of ``code_version``; naming,
descriptions and how a run starts and ends live in ``runs``, above it.

The tracking URI comes from the environment (``mlflow run`` hands ``MLFLOW_TRACKING_URI`` and
``MLFLOW_RUN_ID`` to the entry point), else MLflow's default ``sqlite:///mlflow.db``; nothing here
calls ``set_tracking_uri``, which would break that hand-over.
"""

import ast
import concurrent.futures
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from kdflow import variants
from kdflow.data import NUM_CLASSES, TRAIN_SIZE, read_npy_header

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KIND_TAG = "kdflow.kind"
CODE_VERSION_TAG = "kdflow.code_version"
DATA_DIGEST_TAG = "kdflow.data_digest"
PARAMS_TAG = "kdflow.params"
RUN_KEY_TAG = "kdflow.run_key"
RUN_KEY_INPUTS_TAG = "kdflow.run_key_inputs"
MODEL_URI_TAG = "kdflow.model_uri"
TEACHER_RUN_TAG = "kdflow.teacher_run_id"
TEACHER_MODEL_TAG = "kdflow.teacher_model_uri"
ERROR_TAG = "kdflow.error"
# A teacher run's logits on the training split: the soft targets of every distillation from it.
TEACHER_LOGITS_ARTIFACT = "teacher_logits.npy"
TEACHER_LOGITS_SHAPE = (TRAIN_SIZE, NUM_CLASSES)
# What a teacher run recorded of the logits file it stored, which every reader checks: the sha256 of
# the file and its shape. A distillation records the digest of the logits it learned from.
TEACHER_LOGITS_DIGEST_TAG = "kdflow.teacher_logits_sha256"
TEACHER_LOGITS_SHAPE_TAG = "kdflow.teacher_logits_shape"


# The modules that decide what a run trains and what it stores for others to reuse (teacher
# logits, the logged model, the reuse key): the training jobs and everything they import
# (tests/test_layers.py derives that set from the imports and holds this list to it). Naming,
# run lifecycle, tables, sweeps, prediction and the command line are left out, so mending them
# does not make hours of finished runs unusable for reuse.
TRAINING_MODULES = ("config", "data", "models", "losses", "variants", "training", "tracking", "registry", "jobs", "precision")


def _syntax(source: str, filename: str) -> str:
    """A module's syntax tree without its docstrings: what it computes, not how it is explained.
    Comments are not in the tree; neither are line numbers, so moving code down a line keeps it."""
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@functools.cache
def code_version() -> str:
    """A digest of what the training modules compute, and of the modules that register variants
    (``variants.PLUGINS_VARIABLE``): reuse is only safe when this matches, git or no git.

    Editing a comment or a docstring keeps it; any other edit, down to a constant or a name,
    changes it. Read once per process: the code that runs is the code that was loaded.
    """
    paths = [PROJECT_ROOT / "kdflow" / f"{module}.py" for module in TRAINING_MODULES]
    plugins = filter(None, os.environ.get(variants.PLUGINS_VARIABLE, "").split(","))
    paths += [Path(sys.modules[plugin.strip()].__file__) for plugin in plugins]
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + _syntax(path.read_text(encoding="utf-8"), str(path)).encode() + b"\0")
    return digest.hexdigest()[:16]


def run_key_inputs(kind: str, config, data_digest: str, teacher_logits_digest: str = "") -> dict:
    """What makes two runs train the same thing: kind, parameters, code and data agree, and a
    distillation's teacher logits too (their digest, as the teacher run recorded it).

    ``data_dir`` is left out because it only says where the data came from; the digest pins what.
    Teachers of the same key trained on other hardware, or again after their logits were lost,
    can differ; the digest keeps the distillations from them apart.
    """
    inputs = {"kind": kind, "params": {name: value for name, value in config.params(kind).items() if name != "data_dir"},
              "code_version": code_version(), "data_digest": data_digest}
    return inputs | ({"teacher_logits_digest": teacher_logits_digest} if kind == "distill" else {})


def run_key(kind: str, config, data_digest: str, teacher_logits_digest: str = "") -> str:
    """The digest of ``run_key_inputs``: equal keys, the same training."""
    inputs = run_key_inputs(kind, config, data_digest, teacher_logits_digest)
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def log_dataset(kind: str, config, splits) -> None:
    """Record the training split as the run's input, with the checked content digest."""
    dataset = mlflow.data.from_numpy(
        splits.train_images,
        targets=splits.train_labels,
        # Given as an object: MLflow cannot guess a source type from text like "cache: /path".
        source=LocalArtifactDatasetSource(splits.source),
        name=f"{splits.dataset}-train",
        digest=splits.digest[:32],
    )
    try:
        mlflow.log_input(dataset, context="training")
    except MlflowException:
        # Runs that log a dataset new to the experiment at once race in MLflow's SQL store: each
        # finds no row for it and inserts one, and all but the first break its unique constraint.
        # Asked again, the store finds the first run's row and links this run to it.
        mlflow.log_input(dataset, context="training")
    mlflow.set_tag(DATA_DIGEST_TAG, splits.digest)


def mark_complete(kind: str, config) -> None:
    """Write the run key: the last thing a run writes, once everything it promises is stored.

    Only runs with a key are reused or counted in results, so a run that failed anywhere before
    this line, whatever MLflow later makes of its status, can never stand in for a real result.
    """
    tags = mlflow.get_run(mlflow.active_run().info.run_id).data.tags
    inputs = (kind, config, tags[DATA_DIGEST_TAG], tags.get(TEACHER_LOGITS_DIGEST_TAG, ""))
    # The key's inputs, readable on the run page: why two runs share a key, or do not.
    mlflow.set_tag(RUN_KEY_INPUTS_TAG, json.dumps(run_key_inputs(*inputs), sort_keys=True))
    mlflow.set_tag(RUN_KEY_TAG, run_key(*inputs))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def log_teacher_logits(logits: np.ndarray) -> None:
    """Store a teacher's logits with the active run, with the digest and shape every reader checks."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / TEACHER_LOGITS_ARTIFACT
        np.save(path, logits)
        mlflow.set_tags({TEACHER_LOGITS_DIGEST_TAG: _sha256(path), TEACHER_LOGITS_SHAPE_TAG: ",".join(map(str, logits.shape))})
        mlflow.log_artifact(str(path))


def teacher_logits(run) -> np.ndarray:
    """The logits a teacher run stored, read-only, once the file has been checked against the
    digest and shape the run recorded; a ValueError names the run, the file and what is wrong."""
    tags = run.data.tags
    digest, shape = tags.get(TEACHER_LOGITS_DIGEST_TAG), tags.get(TEACHER_LOGITS_SHAPE_TAG)
    if digest is None or shape is None:
        raise ValueError(
            f"teacher run {run.info.run_id}: its {TEACHER_LOGITS_ARTIFACT} has no recorded digest and shape "
            "(a teacher of an older kdflow, or one that failed before storing them)"
        )
    return _checked_logits(run.info.run_id, digest, shape)


@functools.lru_cache(maxsize=4)
def _checked_logits(run_id: str, digest: str, shape: str) -> np.ndarray:
    """Download and check a teacher's logits. Cached per process: a sweep's warm worker reads the
    same teacher for every distillation from it, and what was checked once stays what it was."""
    where = f"teacher run {run_id}: its {TEACHER_LOGITS_ARTIFACT}"
    expected = ",".join(map(str, TEACHER_LOGITS_SHAPE))
    if shape != expected:
        raise ValueError(f"{where} was recorded with shape ({shape}), not ({expected}), one logit per class per training image")
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=TEACHER_LOGITS_ARTIFACT, dst_path=folder))
        except (MlflowException, OSError) as error:
            raise ValueError(f"{where} cannot be read from the artifact store ({error})") from None
        try:
            stored_shape, dtype, _ = read_npy_header(path)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if stored_shape != TEACHER_LOGITS_SHAPE or dtype != np.float32:
            raise ValueError(f"{where} holds {dtype} of shape {stored_shape}, not float32 of shape {TEACHER_LOGITS_SHAPE}")
        if _sha256(path) != digest:
            raise ValueError(f"{where} has changed since the teacher stored it: its sha256 is not the recorded {digest}")
        logits = np.load(path, allow_pickle=False)
    if not np.isfinite(logits).all():
        raise ValueError(f"{where} holds NaN or infinite logits")
    logits.setflags(write=False)
    return logits


# One thread writes each evaluation's metrics while training goes on. MLflow's own asynchronous
# logging (synchronous=False) would too, but ending a run then waits up to a second for its logging
# thread to notice, which cost more than the writes it saved.
_metric_writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdflow-metrics")
# The run id and the pending write of the last evaluation logged in this process, until it is stored.
_in_flight: dict[str, concurrent.futures.Future] = {}


def log_evaluation(evaluation) -> None:
    """Log one evaluation's metrics at its step (what a run prints of it is ``runs``' concern).

    The loop does not wait for the store at every evaluation: the write happens beside training.
    The next evaluation first waits for the previous one's write, so a store that refuses metrics
    still fails the run within one evaluation, as a direct write would.
    """
    wait_for_evaluations()
    run_id, now = mlflow.active_run().info.run_id, int(time.time() * 1000)
    metrics = [Metric(name, getattr(evaluation, name), now, evaluation.step)
               for name in ("train_loss", "validation_loss", "validation_accuracy")]
    _in_flight[run_id] = _metric_writer.submit(mlflow.MlflowClient().log_batch, run_id, metrics=metrics)


def wait_for_evaluations() -> None:
    """Wait until every evaluation the active run logged is stored; the store's error if one was refused."""
    pending = _in_flight.pop(mlflow.active_run().info.run_id, None)
    # Anything else is the last write of a run this process has ended (a trial stopped between
    # evaluations): not this run's to raise.
    _in_flight.clear()
    if pending is not None:
        pending.result()


def _has_its_results(kind: str, run) -> bool:
    """Whether what a run promises can still be read: its model, and a teacher's logits, checked."""
    if MODEL_URI_TAG not in run.data.tags:
        return False
    try:
        mlflow.models.get_model_info(run.data.tags[MODEL_URI_TAG])
    except (MlflowException, OSError):
        return False
    if kind == "teacher":
        try:
            teacher_logits(run)
        except ValueError as error:
            print(f"not reusing {error}", flush=True)
            return False
    return True


def finished_runs_by_key(experiment_id: str, key: str | None = None) -> dict[str, list]:
    """The experiment's FINISHED, keyed runs (those with ``key`` alone, if given), newest first per key.

    One search for them all: a sweep asks for hundreds of keys before its first trial starts.
    """
    with_key = f"= '{key}'" if key else "IS NOT NULL"
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` {with_key} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    newest_first = {}
    for run in runs:
        newest_first.setdefault(run.data.tags[RUN_KEY_TAG], []).append(run)
    return newest_first


def reusable(kind: str, candidates: list):
    """The newest of a key's finished runs whose model (and a teacher's logits, checked) can still be read, or None."""
    return next((run for run in candidates if _has_its_results(kind, run)), None)


def find_finished_run(kind: str, key: str, experiment_id: str):
    """The newest FINISHED run of the experiment with this run key (it trained exactly this) whose
    model (and a teacher's logits) can still be read, or None."""
    return reusable(kind, finished_runs_by_key(experiment_id, key).get(key, []))
