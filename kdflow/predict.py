"""Image files to MNIST digits, and a kdflow model's answers for them (``cli`` reads the command line).

A picture becomes an MNIST digit the way MNIST's were made: grey, white digit on black, the ink's
bounding box scaled to fit 20x20 pixels (aspect ratio kept) and placed in a 28x28 frame with its
centre of mass in the middle. A picture that is already 28x28 is taken as an MNIST digit and only
greyed (and inverted if it is dark on light), so MNIST's own images come back unchanged.
A ``.npy`` file holds one image (28, 28) or (784,), or several (N, 28, 28) or (N, 784).

A file that cannot be read is reported with its error and the other files are still answered;
the exit status is then 1.
"""

from pathlib import Path

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from PIL import Image, ImageOps, UnidentifiedImageError

from kdflow import registry

# The best MNIST student of kdtf's setup (registry.champion_alias).
DEFAULT_MODEL_URI = f"models:/{registry.registered_name('student', 'mnist')}@{registry.CHAMPION}"
# What a directory given as input is searched for.
SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")
# MNIST fits each digit's ink into 20x20 pixels of its 28x28 frame.
FRAME, BOX = 28, 20


def to_mnist(image: Image.Image) -> np.ndarray:
    """A picture as a (28, 28) float32 MNIST digit in [0, 1]."""
    if "A" in image.getbands() or "transparency" in image.info:
        # Ink drawn on a transparent page: put the page on white first.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    grey = np.asarray(ImageOps.grayscale(image), dtype=np.float32)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:  # Dark ink on a light page: MNIST digits are white on black.
        grey, border = 255.0 - grey, 255.0 - border
    if grey.shape == (FRAME, FRAME):
        return grey / 255.0
    # The page's own level is background, not ink (a photo's paper is rarely pure black).
    ink = np.clip(grey - np.median(border), 0.0, None)
    if ink.max() <= 0.0:
        raise ValueError("no digit found: the image is blank")
    ink = ink / ink.max()
    rows, columns = np.nonzero(ink > 0.1)
    ink = ink[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    scale = BOX / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    digit = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS)).clip(0.0, 1.0)
    # Place the digit so that its centre of mass falls on the frame's centre, staying inside it.
    mass_rows, mass_columns = np.indices(digit.shape)
    total = digit.sum()
    top = round(FRAME / 2 - (mass_rows * digit).sum() / total)
    left = round(FRAME / 2 - (mass_columns * digit).sum() / total)
    top = min(max(top, 0), FRAME - digit.shape[0])
    left = min(max(left, 0), FRAME - digit.shape[1])
    frame = np.zeros((FRAME, FRAME), dtype=np.float32)
    frame[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return frame


def read_images(path: Path) -> np.ndarray:
    """The (N, 28, 28) float32 digits in one file; ValueError saying what is wrong with it."""
    if not path.is_file():
        raise ValueError("no such file")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"not a readable .npy array ({error})") from None
        if array.shape in ((FRAME, FRAME), (FRAME * FRAME,)):
            array = array[np.newaxis]
        try:
            return registry.images_to_pixels(array)
        except MlflowException as error:
            raise ValueError(error.message) from None
    try:
        with Image.open(path) as image:
            return to_mnist(image)[np.newaxis]
    except UnidentifiedImageError:
        raise ValueError("not an image (PNG or JPEG) nor a .npy array") from None
    except OSError as error:
        raise ValueError(f"cannot read the image ({error})") from None


def expand(paths: list[str]) -> list[Path]:
    """The files to answer: each file as given, each directory's images and arrays by name."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(item for item in path.iterdir() if item.suffix.lower() in SUFFIXES)
        else:
            files.append(path)
    return files


def load_model(model_uri: str):
    """The pyfunc model behind a URI; a ValueError naming ``model_uri`` when it does not resolve."""
    registry.resolve(model_uri, "model_uri")
    return mlflow.pyfunc.load_model(model_uri)


def predict_files(model, files: list[Path]) -> list[dict]:
    """One answer per image (a .npy file may hold several), or one error per unreadable file."""
    answers, batches = [], []
    for path in files:
        try:
            images = read_images(path)
        except ValueError as error:
            answers.append({"file": str(path), "error": str(error)})
            continue
        several = path.suffix.lower() == ".npy" and len(images) > 1
        for index in range(len(images)):
            answers.append({"file": f"{path}[{index}]" if several else str(path)})
        batches.append(images)
    if batches:
        predictions = model.predict(np.concatenate(batches))
        answered = (answer for answer in answers if "error" not in answer)
        for answer, digit, probabilities in zip(answered, predictions["digit"], predictions["probabilities"]):
            answer.update(digit=int(digit), probability=float(probabilities[digit]))
    return answers
