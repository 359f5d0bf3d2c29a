"""A teacher's stored logits are checked, not trusted: against the digest and shape its run recorded.

One short teacher is trained into a store of this module's own; each test changes its
``teacher_logits.npy`` in the artifact store, as a disk fault or a careless hand would, and
restores it after. A teacher named explicitly then fails at once, naming the run, the file and
what is wrong; one found by the lookup is passed over, and a fresh teacher is trained instead.
"""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.utils.file_utils import local_file_uri_to_path

from kdflow import config, tracking
from tests.conftest import ROOT, SHORT, ProjectStore, succeeded

# One worker runs them all (tests/conftest.py): the module's store, and the teacher it trains, are built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("teacher_logits")]

STEPS = [f"--{name}={value}" for name, value in SHORT.items()]


def entry_point(store: ProjectStore, kind: str, *arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "entrypoints" / f"{kind}.py"), *STEPS, *arguments]
    return subprocess.run(command, cwd=store.folder, env=store.env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory, fetched_mnist):
    store = ProjectStore(tmp_path_factory.mktemp("teacher_logits"), fetched_mnist[1])
    succeeded(entry_point(store, "teacher"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store.uri)
        (store.teacher,) = store.runs("teacher")
    return store


@pytest.fixture
def logits_file(teacher_store, monkeypatch):
    """The teacher's stored logits file; whatever a test does to it is undone afterwards."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", teacher_store.uri)
    path = Path(local_file_uri_to_path(teacher_store.teacher.info.artifact_uri)) / tracking.TEACHER_LOGITS_ARTIFACT
    genuine = path.read_bytes()
    yield path
    path.write_bytes(genuine)


def save(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as file:
        np.save(file, array)


def genuine_logits(path: Path) -> np.ndarray:
    return np.load(path)


# Each way a stored file can be wrong, and what the refusal says of it.
CHANGES = {
    "rows permuted": (lambda path: save(path, np.random.default_rng(0).permutation(genuine_logits(path))), "has changed since"),
    "random values": (lambda path: save(path, np.random.default_rng(0).normal(size=tracking.TEACHER_LOGITS_SHAPE)
                                        .astype(np.float32)), "has changed since"),
    "NaN rows": (lambda path: save(path, np.where(np.arange(55_000)[:, None] < 5, np.nan, genuine_logits(path))
                                   .astype(np.float32)), "has changed since"),
    "cut in half": (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "the header promises"),
    "empty": (lambda path: path.write_bytes(b""), "not a readable .npy array"),
    "9 classes": (lambda path: save(path, genuine_logits(path)[:, :9]), "of shape (55000, 9), not float32 of shape (55000, 10)"),
    "1,000 rows": (lambda path: save(path, genuine_logits(path)[:1000]), "of shape (1000, 10)"),
    "float64": (lambda path: save(path, genuine_logits(path).astype(np.float64)), "holds float64"),
    "deleted": (lambda path: path.unlink(), "cannot be read from the artifact store"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_every_change_is_refused_naming_the_run_and_the_file(teacher_store, logits_file, change, capsys):
    make, says = CHANGES[change]
    make(logits_file)
    teacher = teacher_store.teacher
    with pytest.raises(ValueError, match=f"^teacher run {teacher.info.run_id}: its teacher_logits.npy") as refused:
        tracking.teacher_logits(teacher)
    assert says in str(refused.value)
    # The lookup passes the teacher over, saying why.
    params = json.loads(teacher.data.tags[tracking.PARAMS_TAG])
    teacher_config = config.parse_args("teacher", [f"--{name}={value}" for name, value in params.items()])
    data_digest = teacher.data.tags[tracking.DATA_DIGEST_TAG]
    assert tracking.find_finished_run("teacher", tracking.run_key("teacher", teacher_config, data_digest), teacher.info.experiment_id) is None
    assert f"not reusing {refused.value}" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["cut in half", "rows permuted"])
def test_a_named_teacher_whose_logits_are_wrong_fails_at_once(teacher_store, logits_file, change):
    """Exit 2, before any data is read, with the message the check gives."""
    make, says = CHANGES[change]
    make(logits_file)
    process = entry_point(teacher_store, "distill", "--teacher", "models:/kd-teacher/1")
    assert process.returncode == 2, process.stderr[-3000:]
    message = process.stderr.strip().splitlines()[-1]
    run_id = teacher_store.teacher.info.run_id
    assert message.startswith(
        f"kdflow distill: error: teacher: 'models:/kd-teacher/1': teacher run {run_id}: its teacher_logits.npy"
    ) and says in message, message
    failed = teacher_store.runs("distill", status="FAILED")[-1]
    assert failed.inputs.dataset_inputs == []  # Refused before the data was read.


def test_a_found_teacher_whose_logits_changed_is_passed_over_and_a_fresh_one_trained(teacher_store, logits_file):
    make, _ = CHANGES["rows permuted"]
    make(logits_file)
    process = succeeded(entry_point(teacher_store, "distill"))
    old_teacher = teacher_store.teacher
    assert f"not reusing teacher run {old_teacher.info.run_id}: its teacher_logits.npy has changed since" in process.stdout
    assert "no finished teacher run in this experiment has the run key" in process.stdout and "training one" in process.stdout
    (distilled,) = teacher_store.runs("distill")
    fresh = mlflow.get_run(distilled.data.tags[tracking.TEACHER_RUN_TAG])
    assert fresh.info.run_id != old_teacher.info.run_id and fresh.info.status == "FINISHED"
    # The distillation records, and its key holds, the digest of the logits it learned from.
    digest = fresh.data.tags[tracking.TEACHER_LOGITS_DIGEST_TAG]
    assert distilled.data.tags[tracking.TEACHER_LOGITS_DIGEST_TAG] == digest
    params = json.loads(distilled.data.tags[tracking.PARAMS_TAG])
    distill_config = config.parse_args("distill", [f"--{name}={value}" for name, value in params.items()])
    data_digest = fresh.data.tags[tracking.DATA_DIGEST_TAG]
    assert distilled.data.tags[tracking.RUN_KEY_TAG] == tracking.run_key("distill", distill_config, data_digest, digest)
    assert tracking.run_key("distill", distill_config, data_digest, "another") != distilled.data.tags[tracking.RUN_KEY_TAG]


def test_a_teacher_that_recorded_no_digest_is_not_trusted(teacher_store, monkeypatch):
    """An older kdflow's teacher, or one that failed before storing them, records neither."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", teacher_store.uri)
    teacher, client = teacher_store.teacher, mlflow.MlflowClient()
    client.delete_tag(teacher.info.run_id, tracking.TEACHER_LOGITS_DIGEST_TAG)
    try:
        with pytest.raises(ValueError, match="its teacher_logits.npy has no recorded digest and shape"):
            tracking.teacher_logits(mlflow.get_run(teacher.info.run_id))
    finally:
        client.set_tag(teacher.info.run_id, tracking.TEACHER_LOGITS_DIGEST_TAG, teacher.data.tags[tracking.TEACHER_LOGITS_DIGEST_TAG])
