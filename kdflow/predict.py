"""Image files to MNIST digits, and a kdflow model's answers for them (``cli`` reads the command line).

A picture becomes an MNIST digit the way MNIST's were made: grey, white digit on black, the ink's
bounding box scaled to fit 20x20 pixels (aspect ratio kept) and placed in a 28x28 frame with its
centre of mass in the middle. A picture that is already 28x28 is taken as an MNIST digit and only
greyed (and inverted if it is dark on light), so MNIST's own images come back unchanged.
A ``.npy`` file holds one image (28, 28) or (784,), or several (N, 28, 28) or (N, 784).

A file that cannot be read is reported with its error and the other files are still answered;
the exit status is then 1.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from PIL import Image, ImageOps, UnidentifiedImageError

from kdflow import registry

# The best MNIST student of kdtf's setup (registry.champion_alias).
DEFAULT_MODEL_URI = f"models:/{registry.registered_name('student', 'mnist')}@{registry.CHAMPION}"
# What a directory given as input is searched for, and the only picture formats decoded: others
# (EPS, for one, would start Ghostscript) are refused unread.
SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")
FORMATS = ("PNG", "JPEG")
# The largest picture decoded: 16 megapixels, a 300 dpi A4 scan with room to spare. A small file
# can decode to gigabytes; it is refused, with its size, before it is decoded.
MAX_PIXELS = 4096 * 4096
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


def _npy_images(path: Path):
    """(count, read) of a .npy file: how many images it holds, and ``read(start, stop)`` reading
    those images from disk as stored. Nothing more than a chunk is ever in memory."""
    try:
        with path.open("rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = np.lib.format.read_array_header_1_0 if version[0] == 1 else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(file)
            offset = file.tell()
    except (OSError, ValueError) as error:  # A zip archive (.npz) named .npy lands here too.
        raise ValueError(f"not a readable .npy array ({error})") from None
    if fortran_order:
        raise ValueError("a Fortran-ordered array; save it with numpy.save in the default (C) order")
    if dtype.hasobject:
        raise ValueError("an array of Python objects, not pixels")
    if shape in ((FRAME, FRAME), (FRAME * FRAME,)):
        shape = (1, *shape)
    # Read as stored; registry.shaped_images, on each chunk, refuses shapes and dtypes that are not images.
    values_per_item = int(np.prod(shape[1:]))

    def read(start: int, stop: int) -> np.ndarray:
        count = (stop - start) * values_per_item
        flat = np.fromfile(path, dtype=dtype, count=count, offset=offset + start * values_per_item * dtype.itemsize)
        return flat.reshape(-1, *shape[1:])

    return (shape[0] if shape else 1), read


def read_images(path: Path) -> tuple[int, Callable[[int, int], np.ndarray]]:
    """(count, read) of one file's digits, checked: how many it holds, and ``read(start, stop)``
    giving those digits, raw (uint8 or float); ValueError saying what is wrong with the file.

    A ``.npy`` file is checked and later read a chunk at a time, so its size does not matter.
    """
    if not path.is_file():
        raise ValueError("no such file")
    if path.suffix.lower() == ".npy":
        count, read = _npy_images(path)
        try:
            for start in range(0, count, registry.CHUNK):
                registry.images_to_pixels(read(start, min(start + registry.CHUNK, count)))  # Checks the values.
        except MlflowException as error:
            raise ValueError(error.message) from None
        return count, read
    try:
        with Image.open(path, formats=FORMATS) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(
                    f"the image is {image.width} x {image.height} pixels, more than the {MAX_PIXELS:,} "
                    "kdflow decodes; scale it down first"
                )
            digit = to_mnist(image)[np.newaxis]
    except UnidentifiedImageError:
        raise ValueError("not an image (PNG or JPEG) nor a .npy array") from None
    except Image.DecompressionBombError as error:  # Pillow's own limit, met while opening.
        raise ValueError(f"the image is too large to decode ({error})") from None
    except OSError as error:
        raise ValueError(f"cannot read the image ({error})") from None
    return 1, lambda start, stop: digit[start:stop]


def expand(paths: list[str]) -> list[Path]:
    """The files to answer: each file as given, each directory's images and arrays by name."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(item for item in path.iterdir() if item.suffix.lower() in SUFFIXES)
            if not found:
                raise ValueError(f"images: {path} holds no PNG, JPEG or .npy file")
            files += found
        else:
            files.append(path)
    return files


def load_model(model_uri: str):
    """The pyfunc model behind a URI; a ValueError naming ``model_uri`` when it does not resolve."""
    registry.resolve(model_uri, "model_uri")
    return mlflow.pyfunc.load_model(model_uri)


def predict_files(model, files: list[Path]) -> Iterator[dict]:
    """One answer per image (a .npy file may hold several), or one error per unreadable file, in
    order. Images are answered ``registry.CHUNK`` at a time, so memory stays bounded."""
    pending = []  # (name, image) not answered yet

    def answer_pending():
        predictions = model.predict(np.stack([image for _, image in pending]))
        answers = [
            {"file": name, "digit": int(digit), "probability": float(probabilities[digit])}
            for (name, _), digit, probabilities in zip(pending, predictions["digit"], predictions["probabilities"])
        ]
        pending.clear()
        return answers

    for path in files:
        try:
            count, read = read_images(path)
        except ValueError as error:
            if pending:  # Answers stay in the order of the files.
                yield from answer_pending()
            yield {"file": str(path), "error": str(error)}
            continue
        several = path.suffix.lower() == ".npy" and count > 1
        for start in range(0, count, registry.CHUNK):
            # As float pixels, so that a file of bytes and a picture can share one batch.
            chunk = registry.images_to_pixels(read(start, min(start + registry.CHUNK, count)))
            for index, image in enumerate(chunk, start):
                pending.append((f"{path}[{index}]" if several else str(path), image))
                if len(pending) == registry.CHUNK:
                    yield from answer_pending()
    if pending:
        yield from answer_pending()
