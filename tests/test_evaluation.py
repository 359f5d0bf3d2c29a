"""MLflow's evaluation at the end of a job imports nothing while it holds MLflow's import-hook lock.

``mlflow.models.evaluate`` runs, for each imported library with autologging (TensorFlow, Keras,
scikit-learn in a job), that library's ``autolog(disable=True)`` under MLflow's global import-hook
lock, importing MLflow's module for the library the first time. Another thread importing at that
moment (the run's system-metrics thread, the heartbeat, Ray's) can deadlock with it. A job
prepares for its evaluation before its threads start (``runs._prepare_evaluation``); here a
fresh process evaluates as a job does, and a finder placed first on ``sys.meta_path`` records
every import made while the evaluating thread holds that lock: none of an installed package with
the preparation, some without it, which shows the finder sees them.
"""

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

EVALUATE = """
import sys
from kdflow import quiet
quiet.import_tensorflow()
import keras, mlflow, numpy as np, sklearn
from mlflow.utils import import_hooks
from kdflow import registry, runs

if sys.argv[1] == "prepared":
    runs._prepare_evaluation()

class UnderTheLock:
    def __init__(self):
        self.names = []
    def find_spec(self, name, path=None, target=None):
        if import_hooks._post_import_hooks_lock._is_owned():
            self.names.append(name)
        return None

spy = UnderTheLock()
sys.meta_path.insert(0, spy)
mlflow.set_tracking_uri(sys.argv[2])
labels = np.arange(1000) % 10
with mlflow.start_run():
    registry.evaluate(None, "mnist-test", labels, np.roll(labels, 1))
# A package that is not installed (MLflow looks for pyspark) runs no code and takes no lock for long.
import importlib.util
installed = [name for name in set(spy.names) if importlib.util.find_spec(name.split(".")[0]) is not None]
print("UNDER THE LOCK:", sorted(installed))
"""


@pytest.mark.parametrize("preparation", ["prepared", "unprepared"])
def test_the_evaluation_imports_nothing_under_the_import_hook_lock(preparation, tmp_path):
    process = subprocess.run([sys.executable, "-c", EVALUATE, preparation, f"sqlite:///{tmp_path}/mlflow.db"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    imported = ast.literal_eval(process.stdout.split("UNDER THE LOCK:", 1)[1].strip())
    if preparation == "prepared":
        assert imported == [], imported
    else:  # The first evaluation imports MLflow's TensorFlow module under the lock.
        assert "mlflow.tensorflow" in imported, imported
