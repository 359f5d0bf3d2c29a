"""Logged models, the model registry and the ``champion`` alias.

Every run logs its network as an MLflow pyfunc model that wraps the Keras file, so that
``mlflow.pyfunc.load_model("models:/kd-student@champion").predict(images)`` takes raw images, uint8
or float, (N, 28, 28) or (N, 784), and returns each image's digit and class probabilities.

MLflow enforces tensor signatures to the exact rank and dtype, which would refuse half of those
inputs, so the signature declares the output schema and the wrapper checks the input itself,
raising the same INVALID_PARAMETER_VALUE error (HTTP 400 behind ``mlflow models serve``).
"""

import tempfile
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

REGISTERED_NAMES = {"teacher": "kd-teacher", "student": "kd-student", "distill": "kd-student"}
CHAMPION = "champion"
VALIDATION_ACCURACY_TAG = "validation_accuracy"
SIGNATURE = ModelSignature(
    inputs=None,  # Checked by images_to_pixels; see the module docstring.
    outputs=Schema([ColSpec(DataType.long, "digit"), ColSpec(Array(DataType.double), "probabilities")]),
)
# What loading the model needs. Named here, pinned to the installed versions, because MLflow's
# inference of them loads the model in a fresh interpreter: about 9 seconds per run.
MODEL_REQUIREMENTS = ("mlflow", "cloudpickle", "tensorflow", "keras", "numpy", "pandas")


def images_to_pixels(images) -> np.ndarray:
    """Check raw images and turn them into (N, 28, 28) float32 pixels in [0, 1]."""
    images = np.asarray(images)
    if images.ndim == 2 and images.shape[1] == 28 * 28:
        images = images.reshape(-1, 28, 28)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise MlflowException(
            f"images must be shaped (N, 28, 28) or (N, 784), got {images.shape}",
            error_code=INVALID_PARAMETER_VALUE,
        )
    if np.issubdtype(images.dtype, np.integer):
        if images.size and (images.min() < 0 or images.max() > 255):
            raise MlflowException("integer images must hold 0-255 pixel values", INVALID_PARAMETER_VALUE)
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise MlflowException(
            f"images must be integers 0-255 or floats 0-1, got dtype {images.dtype}", INVALID_PARAMETER_VALUE
        )
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise MlflowException(
            "float images must hold pixels in [0, 1]; send 0-255 values as integers", INVALID_PARAMETER_VALUE
        )
    return images.astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class DigitClassifier(mlflow.pyfunc.PythonModel):
    """Serves a kdflow network: raw images in, digit and class probabilities out."""

    def load_context(self, context):
        import keras

        self.keras_model = keras.saving.load_model(context.artifacts["keras_model"])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        logits = np.asarray(self.keras_model(images_to_pixels(model_input), training=False))
        probabilities = _softmax(logits.astype(np.float64))
        return pd.DataFrame({"digit": probabilities.argmax(axis=1), "probabilities": list(probabilities)})


def log_model(keras_model, kind: str, example_images: np.ndarray, validation_accuracy: float):
    """Log the network as this run's model, register it, and return MLflow's ModelInfo."""
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
            registered_model_name=REGISTERED_NAMES[kind],
            pip_requirements=[f"{name}=={metadata.version(name)}" for name in MODEL_REQUIREMENTS],
            # DigitClassifier is pickled by reference to kdflow.registry: ship the package with the
            # model so it loads where kdflow is not installed.
            code_paths=[str(Path(__file__).resolve().parent)],
        )
    client = mlflow.MlflowClient()
    version = model_info.registered_model_version
    client.set_model_version_tag(REGISTERED_NAMES[kind], version, VALIDATION_ACCURACY_TAG, str(validation_accuracy))
    return model_info


def promote_if_better(name: str, version: str, validation_accuracy: float) -> bool:
    """Point the ``champion`` alias at this version if it beats the current one on validation."""
    client = mlflow.MlflowClient()
    current_version = client.get_registered_model(name).aliases.get(CHAMPION)
    if current_version is not None:
        current = client.get_model_version(name, current_version)
        if float(current.tags.get(VALIDATION_ACCURACY_TAG, "-1")) >= validation_accuracy:
            return False
    client.set_registered_model_alias(name, CHAMPION, version)
    return True


def load_keras_model(model_uri: str):
    """The Keras network inside a kdflow model, e.g. a teacher for online soft targets."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().keras_model


def resolve(model_uri: str, parameter: str):
    """The ModelInfo behind a URI, or a ValueError naming the parameter when it does not resolve."""
    try:
        return mlflow.models.get_model_info(model_uri)
    except (MlflowException, OSError) as error:
        raise ValueError(f"{parameter}: {model_uri!r} does not resolve to a model ({error})") from None
