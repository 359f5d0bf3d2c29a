"""A shared tracking server with MLflow's basic-auth app, as README's multi-machine recipe starts it.

Anonymous requests are refused; a sweep given credentials in MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD works (on a local Ray, whose workers would inherit them anyway: the
runtime_env that carries them to other machines' nodes is not exercised here), and the password
appears in no MLflow parameter or tag and in no file of Ray Tune's results.
"""

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest

from kdflow import sweeps
from tests.conftest import MLFLOW, ROOT, SHORT, free_port, serving, succeeded

pytestmark = pytest.mark.slow

PASSWORD = "kdflow-test-admin-password"


def test_a_sweep_on_an_authenticated_server_keeps_its_password_out_of_every_record(fetched_mnist, tmp_path, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    server_env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only"}
    command = [MLFLOW, "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1],
               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
               "--artifacts-destination", str(tmp_path / "artifacts")]
    # The auth app keeps its users in basic_auth.db in the server's working folder: this test's.
    monkeypatch.chdir(tmp_path)
    with serving(command, f"{uri}/health", env=server_env):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
        assert refused.value.code == 401

        credentials = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD}
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "KDFLOW_CACHE_DIR": str(fetched_mnist[1]), **credentials}
        sweep = [MLFLOW, "run", str(ROOT), "-e", "sweep", "--env-manager", "local", "-P", "kinds=student", "-P", "seeds=12",
                 *[f"-P{name}={value}" for name, value in SHORT.items()]]
        succeeded(subprocess.run(sweep, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900))

        for name, value in {**credentials, "MLFLOW_TRACKING_URI": uri}.items():
            monkeypatch.setenv(name, value)
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert {run.data.tags["kdflow.kind"] for run in runs} == {"sweep", "student"}
        assert all(run.info.status == "FINISHED" for run in runs)
        for run in runs:
            assert PASSWORD not in repr(run.data.params) + repr(run.data.tags)
        (sweep_run,) = [run for run in runs if run.data.tags["kdflow.kind"] == "sweep"]
        results = Path.home() / "ray_results" / f"sweep-{sweep_run.info.run_id}-phase1"
        files = [path for path in results.rglob("*") if path.is_file()]
        assert files  # Tune wrote its results (params.json among them) ...
        for path in files:  # ... and the password is in none of them.
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_a_password_in_the_tracking_uri_is_refused(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://admin:{PASSWORD}@127.0.0.1:5000")
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_PASSWORD"):
        sweeps.absolute_tracking_uri()
