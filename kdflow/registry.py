"""Logged models, the model registry and the ``champion`` alias.

Every run logs its network as an MLflow pyfunc model that wraps the Keras file, so that
``mlflow.pyfunc.load_model("models:/kd-student@champion").predict(images)`` takes raw images, uint8
or float, (N, 28, 28) or (N, 784), and returns each image's digit, as a classifier's ``predict``
does; with ``params={"probabilities": True}`` it returns a DataFrame of each image's digit and
class probabilities. Answering the digits alone is what lets MLflow's own evaluation,
``mlflow.models.evaluate(model_uri, data, targets="label", model_type="classifier")``, work on
every kdflow model; each run logs the same evaluation of its test split (``evaluate``).

MLflow enforces tensor signatures to the exact rank and dtype, which would refuse half of those
inputs, so the signature declares the output schema and the wrapper checks the input itself,
raising the same INVALID_PARAMETER_VALUE error (HTTP 400 behind ``mlflow models serve``).
"""

import contextlib
import functools
import io
import re
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode)
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

from kdflow import tracking
from kdflow.config import KIND_PARAMETERS, Config
from kdflow.data import NUM_CLASSES

CHAMPION = "champion"
# Tags on every registered version: what its champion alias compares, and (on students) which alias
# it competes for; the versions of one alias are those with the same tag.
VALIDATION_ACCURACY_TAG = "validation_accuracy"
ALIAS_TAG = "champion_alias"
# The inference parameter that asks for the class probabilities beside each digit.
PROBABILITIES = "probabilities"
# What a champion is chosen over: the best student of a network, recipe, loss and setup, however
# it was distilled (at which temperature, from which teacher) and whatever its seed.
CHOSEN_OVER = ("temperature", "teacher_temperature", "seed", "teacher", "teacher_signal", "data_dir")
SIGNATURE = ModelSignature(
    inputs=None,  # Checked by images_to_pixels; see the module docstring.
    outputs=Schema([ColSpec(DataType.long, "digit")]),
    # Asked for, the answer is a DataFrame of the digit and a list column of the ten probabilities.
    params=ParamSchema([ParamSpec(PROBABILITIES, DataType.boolean, False)]),
)
# What loading the model needs. Named here, pinned to the installed versions, because MLflow's
# inference of them loads the model in a fresh interpreter: about 9 seconds per run.
MODEL_REQUIREMENTS = ("mlflow", "cloudpickle", "tensorflow", "keras", "numpy", "pandas")


# Images per network call: a request of any size is answered in chunks of this many, so the
# pixels and activations in memory stay bounded (only the answers grow with the request).
CHUNK = 10_000
# The columns of a DataFrame of images (``dataframe_split`` behind ``mlflow models serve``), one per pixel.
PIXEL_COLUMNS = [f"pixel{index}" for index in range(28 * 28)]


def shaped_images(images) -> np.ndarray:
    """Raw images as (N, 28, 28) in their own dtype, integers or floats; wrong shapes refused.

    A DataFrame's columns are taken by name (``PIXEL_COLUMNS``, in any order), or, when they are
    the positions 0 to 783 that pandas gives an array's columns, in order; any others are refused.
    """
    if isinstance(images, pd.DataFrame):
        columns = list(images.columns)
        if columns != PIXEL_COLUMNS and columns != list(range(28 * 28)):
            pixel_names = set(PIXEL_COLUMNS)
            if len(columns) != len(PIXEL_COLUMNS) or set(columns) != pixel_names:
                others = [repr(column) for column in columns if column not in pixel_names]
                raise MlflowException(
                    "a DataFrame of images must have the 784 columns pixel0, pixel1, ..., pixel783, in any order "
                    f"(or 0, 1, ..., 783, in order), got {len(columns)} columns"
                    + (f", among them {', '.join(others[:3])}" if others else ""),
                    INVALID_PARAMETER_VALUE,
                )
            images = images[PIXEL_COLUMNS]  # The pixel columns in another order: put back in order, by name.
        images = images.to_numpy()
    images = np.asarray(images)
    if images.ndim == 2 and images.shape[1] == 28 * 28:
        images = images.reshape(-1, 28, 28)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise MlflowException(
            f"images must be shaped (N, 28, 28) or (N, 784), got {images.shape}",
            error_code=INVALID_PARAMETER_VALUE,
        )
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise MlflowException(
            f"images must be integers 0-255 or floats 0-1, got dtype {images.dtype}", INVALID_PARAMETER_VALUE
        )
    return images


def images_to_pixels(images) -> np.ndarray:
    """Check raw images and turn them into (N, 28, 28) float32 pixels in [0, 1]."""
    images = shaped_images(images)
    if np.issubdtype(images.dtype, np.integer):
        if images.size and (images.min() < 0 or images.max() > 255):
            raise MlflowException("integer images must hold 0-255 pixel values", INVALID_PARAMETER_VALUE)
        # Checked image by image rather than over the whole input: no digit on the 0-255 scale has
        # 1 as its brightest pixel, whatever is sent with it, and a large input is checked a chunk
        # at a time, so a check over all of it would depend on where the chunks happen to divide.
        # An all-zero image (its brightest pixel 0) is answered like any other.
        if (images.max(axis=(1, 2)) == 1).any():
            raise MlflowException(
                "integer images hold 0-255 pixel values, and an image whose brightest pixel is 1 is a binarised "
                "digit that would be read as almost black: send it as integers 0 and 255, or as floats 0.0 and 1.0",
                INVALID_PARAMETER_VALUE,
            )
        pixels = images.astype(np.float32)
        pixels /= 255.0  # In place: one float copy of the chunk, not two.
        return pixels
    if not np.isfinite(images).all():  # NaN compares false with every bound below.
        raise MlflowException("images must not hold NaN or infinite pixels", INVALID_PARAMETER_VALUE)
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise MlflowException(
            "float images must hold pixels in [0, 1]; send 0-255 values as integers", INVALID_PARAMETER_VALUE
        )
    return images.astype(np.float32, copy=False)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# MLflow asks every PythonModel for type hints, to validate inputs by them; images_to_pixels
# validates these (see the module docstring), so the request is noise here. It cannot be filtered
# (MLflow resets the warning filters around it), so what the class definition prints is dropped.
with contextlib.redirect_stderr(io.StringIO()):

    class DigitClassifier(mlflow.pyfunc.PythonModel):
        """Serves a kdflow network: raw images in, digits (and, asked for, class probabilities) out."""

        def load_context(self, context):
            import keras

            self.keras_model = keras.saving.load_model(context.artifacts["keras_model"])

        def predict(self, context, model_input, params=None) -> np.ndarray | pd.DataFrame:
            images = shaped_images(model_input)
            logits = np.concatenate([
                np.asarray(self.keras_model(images_to_pixels(images[start : start + CHUNK]), training=False))
                for start in range(0, max(len(images), 1), CHUNK)  # One call even for no images.
            ])
            probabilities = _softmax(logits.astype(np.float64))
            digits = probabilities.argmax(axis=1)  # One dimension, as MLflow's classifier evaluation takes it.
            if (params or {}).get(PROBABILITIES):
                return pd.DataFrame({"digit": digits, PROBABILITIES: list(probabilities)})
            return digits


def registered_name(kind: str, config: Config) -> str:
    """kd-teacher and kd-student for kdtf's networks on MNIST, else named by the network and the
    dataset (kd-student-mlp, kd-teacher-fashion-mnist): a network of another dataset can never
    answer for digits, and each network has its own registered model, so its own champion."""
    role = "teacher" if kind == "teacher" else "student"
    differences = config.differences([f"{role}_model", "dataset"])
    return "-".join(["kd", role] + [value.replace("_", "-") for value in differences.values()])


def champion_alias(kind: str, config: Config) -> str:
    """The alias of the best student of this kind trained as ``config`` says, whatever its
    temperatures, seed and teacher run: ``champion`` with kdtf's recipe, loss, teacher network and
    setup (in the format ``auto`` picks here), else named by every parameter that differs, e.g.
    ``champion-num_steps-40-eval_every-20`` or ``champion-loss-weighted-hard_label_weight-0_5``.
    A new parameter or variant therefore never shares kdtf's alias."""
    names = [name for name in KIND_PARAMETERS[kind] if name not in CHOSEN_OVER + ("student_model", "dataset")]
    parts = [CHAMPION] + [part for name, value in config.differences(names).items() for part in (name, value)]
    return re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(parts))  # Aliases take letters, digits, _ and -.


def log_model(keras_model, kind: str, config: Config, example_images: np.ndarray, validation_accuracy: float):
    """Log the network as this run's model, register it, and return MLflow's ModelInfo."""
    name = registered_name(kind, config)
    example = (example_images[:3] * 255).round().astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        keras_path = Path(folder) / "model.keras"
        keras_model.save(keras_path)
        model_info = mlflow.pyfunc.log_model(
            name="model",
            python_model=DigitClassifier(),
            artifacts={"keras_model": str(keras_path)},
            signature=SIGNATURE,
            input_example=example,
            pip_requirements=[f"{name}=={metadata.version(name)}" for name in MODEL_REQUIREMENTS],
            # DigitClassifier is pickled by reference to kdflow.registry: ship the package with the
            # model so it loads where kdflow is not installed.
            code_paths=[str(Path(__file__).resolve().parent)],
        )
    tags = {VALIDATION_ACCURACY_TAG: str(validation_accuracy)}
    if kind != "teacher":
        tags[ALIAS_TAG] = champion_alias(kind, config)
    version = _register(name, model_info, tags)
    model_info.registered_model_version = version
    print(f"registered {name} version {version}", flush=True)
    return model_info


def _register(name: str, model_info, tags: dict[str, str]) -> str:
    """Register a logged model as a new version of ``name``, with its tags; the version.

    One call, tags included. ``mlflow.register_model`` first tries to create the registered model,
    which MLflow's SQL store refuses by loading the existing one with all its versions (a cost that
    grew with the registry), then lists the run's artifacts and searches its logged models for the
    model its ``runs:/`` URI names. Here the registered model is created only when its first
    version finds it missing.
    """
    client = mlflow.MlflowClient()
    register = functools.partial(client.create_model_version, name, model_info.model_uri, model_info.run_id,
                                 tags=tags, model_id=model_info.model_id)
    try:
        return register().version
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):  # Else another run created it meanwhile.
            raise
    return register().version


def evaluate(model_id: str, split: str, labels: np.ndarray, digits: np.ndarray):
    """MLflow's classifier evaluation of a logged model from the digits it answered for labelled
    images (``split``: their dataset's name), logged to the active run and to the model: accuracy,
    precision, recall and F1 overall and per class (per_class_metrics.csv), and the confusion
    matrix (confusion_matrix.png).

    The digits are the ones the run computed for its test score, with the network it logged, so
    MLflow is given them rather than asked to load the model back and predict again, which was
    most of the evaluation's cost. MLflow computes log loss and ROC curves only for
    scikit-learn-like flavours (mlflow/mlflow#5337), so the run's ``test_log_loss`` metric is
    kdflow's own.
    """
    with warnings.catch_warnings():
        # MLflow's hint that integer columns cannot hold missing values: labels and digits never miss.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        answers = mlflow.data.from_pandas(pd.DataFrame({"label": labels, "digit": digits}), name=f"{split}-answers",
                                          targets="label", predictions="digit")
        return mlflow.models.evaluate(data=answers, model_id=model_id, model_type="classifier", evaluators="default",
                                      evaluator_config={"label_list": list(range(NUM_CLASSES))})


def _is_complete(client, run_id: str) -> bool:
    """Whether a version's run completed: FINISHED, with its run key (tracking.mark_complete)."""
    try:
        run = client.get_run(run_id)
    except MlflowException:  # A run deleted for good leaves its versions behind.
        return False
    return run.info.status == "FINISHED" and tracking.RUN_KEY_TAG in run.data.tags


def _best_version(client, name: str, alias: str) -> str | None:
    """The version of ``name`` competing for ``alias`` whose run completed with the best
    validation accuracy (ties: the older), or None when no such run completed.

    Candidates are checked best first, so this usually asks about one run. The server selects the
    alias's own versions, so the cost follows them, not every version of ``name``.
    """
    versions = sorted(
        (
            version for version in client.search_model_versions(f"name = '{name}' and tags.`{ALIAS_TAG}` = '{alias}'")
            if VALIDATION_ACCURACY_TAG in version.tags
        ),
        key=lambda version: (-float(version.tags[VALIDATION_ACCURACY_TAG]), int(version.version)),
    )
    return next((version.version for version in versions if _is_complete(client, version.run_id)), None)


def _alias_holder(client, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None when it points at none."""
    try:
        return client.get_model_version_by_alias(name, alias).version
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(INVALID_PARAMETER_VALUE):  # MLflow's answer for an alias not set.
            raise
        return None


def without_prompt_check(client: mlflow.MlflowClient):
    """The registry client behind ``client``, whose writes skip MlflowClient's check that a
    registered model is no prompt (MLflow 3). MLflow's SQL store makes that check by reading the
    registered model with every one of its versions, a read that grows with them, once per write;
    kdflow's registered models are never prompts. The one use of this private MLflow API."""
    return client._get_registry_client()


def crown_champion(name: str, alias: str, attempts: int = 20) -> str | None:
    """Point ``alias`` at the best complete version of ``name`` competing for it; return that
    version. A version whose run did not complete never holds the alias: with none that did, the
    alias is removed, and None returned.

    Several runs may finish at once, and the registry has no compare-and-set, so each one sets
    the alias and then checks it against every version registered by then, until they agree.
    Whoever writes last has checked after its write, so the alias ends on the best version.
    """
    client = mlflow.MlflowClient()
    for _ in range(attempts):
        best = _best_version(client, name, alias)
        if _alias_holder(client, name, alias) == best:
            # Most runs do not beat the champion and write nothing. A writer that comes later
            # checks after its own write, as below, so reading the alias is enough here.
            return best
        try:
            if best is None:
                client.delete_registered_model_alias(name, alias)
            else:
                without_prompt_check(client).set_registered_model_alias(name, alias, best)
        except MlflowException:
            # MLflow creates a new alias by select-then-insert: two runs creating it at once
            # collide (a unique-constraint error), and the next attempt finds it and updates it.
            continue
        if _best_version(client, name, alias) == best:
            return best
    raise RuntimeError(f"{name}@{alias}: the alias kept changing under {attempts} attempts to set it")


def promote(run_id: str) -> None:
    """Once a run has ended FINISHED: give each champion alias its student versions name the best
    complete version competing for it, which may be this run's. Called only after the run's end, so
    a run stopped anywhere before it never moves an alias onto its version."""
    client = mlflow.MlflowClient()
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        if ALIAS_TAG in version.tags:  # Teachers have no champion.
            alias = version.tags[ALIAS_TAG]
            if crown_champion(version.name, alias) == version.version:
                print(f"{version.name} version {version.version} is now @{alias}", flush=True)


def load_keras_model(model_uri: str):
    """The Keras network inside a kdflow model, e.g. a teacher for online soft targets."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().keras_model


def resolve(model_uri: str, parameter: str):
    """The ModelInfo behind a URI, or a ValueError naming the parameter (and, for an alias that
    does not exist, the aliases that do) when it does not resolve."""
    try:
        return mlflow.models.get_model_info(model_uri)
    except (MlflowException, OSError) as error:
        message = f"{parameter}: {model_uri!r} does not resolve to a model ({error})"
    name, _, alias = model_uri.removeprefix("models:/").partition("@")
    if model_uri.startswith("models:/") and alias:
        try:
            aliases = mlflow.MlflowClient().get_registered_model(name).aliases
            message += f"; {name} has the aliases: {', '.join(sorted(aliases)) or 'none'}"
        except MlflowException:
            pass  # No such registered model: the message above says all there is.
    raise ValueError(message)
