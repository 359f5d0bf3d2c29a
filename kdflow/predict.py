"""Image files to MNIST digits, and a kdflow model's answers for them (``cli`` reads the command line).

A picture is read as a person sees it: upright as its EXIF orientation says, its grey levels
scaled to 0-255 from whatever bit depth it has, and on a white page where it is transparent.
It then becomes an MNIST digit the way MNIST's were made: grey, white digit on black, the ink's
bounding box scaled to fit 20x20 pixels (aspect ratio kept) and placed in a 28x28 frame with its
centre of mass in the middle. A picture that is already 28x28 is taken as an MNIST digit and only
greyed (and inverted if it is dark on light), so MNIST's own images come back unchanged. A blank
picture, of any size, is refused.
A ``.npy`` file holds one image (28, 28) or (784,), or several (N, 28, 28) or (N, 784); its
images are model input, answered as they are.

Anything that goes wrong while reading a file is that file's error: it is reported, the answers
of the images read before it still come out, and the other files are still answered; the exit
status is then 1.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from PIL import Image, ImageOps, UnidentifiedImageError

from kdflow import data, registry
from kdflow.config import DEFAULTS

# The best MNIST student of kdtf's setup (registry.champion_alias).
DEFAULT_MODEL_URI = f"models:/{registry.registered_name('student', DEFAULTS)}@{registry.CHAMPION}"
# What a directory given as input is searched for, and the only picture formats decoded: others
# (EPS, for one, would start Ghostscript) are refused unread.
SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")
FORMATS = ("PNG", "JPEG")
# The largest picture decoded: 16 megapixels, a 300 dpi A4 scan with room to spare. A small file
# can decode to gigabytes; it is refused, with its size, before it is decoded.
MAX_PIXELS = 4096 * 4096
# MNIST fits each digit's ink into 20x20 pixels of its 28x28 frame.
FRAME, BOX = 28, 20
IMAGE_SHAPES = ((FRAME, FRAME), (FRAME * FRAME,))


def grey_levels(image: Image.Image) -> np.ndarray:
    """A picture as a person sees it, as float32 grey levels 0-255 (see the module docstring)."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):
        # 16-bit grey ("I;16", "I" in older Pillow): Pillow's own conversion to 8 bits would clip
        # every level above 255 rather than scale it. 65535 / 255 = 257, exactly.
        values = np.asarray(image)
        levels = (values / np.float32(257.0)).astype(np.float32).clip(0.0, 255.0)
        if "transparency" in image.info:  # The one grey value that stands for transparent: the page.
            levels[values == image.info["transparency"]] = 255.0
        return levels
    if "A" in image.getbands() or "transparency" in image.info:
        # Ink drawn on a transparent page: put the page on white first.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return np.asarray(ImageOps.grayscale(image), dtype=np.float32)


def to_mnist(grey: np.ndarray) -> np.ndarray:
    """A picture's grey levels (0-255) as a (28, 28) float32 MNIST digit in [0, 1]."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:  # Dark ink on a light page: MNIST digits are white on black.
        grey, border = 255.0 - grey, 255.0 - border
    # The page's own level is background, not ink (a photo's paper is rarely pure black).
    ink = np.clip(grey - np.median(border), 0.0, None)
    if ink.max() <= 0.0:
        raise ValueError("no digit found: the image is blank")
    if grey.shape == (FRAME, FRAME):
        return grey / 255.0
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


def _checked_pixels(images: np.ndarray) -> np.ndarray:
    """``registry.images_to_pixels``, refusing with the ValueError that names a file's fault."""
    try:
        return registry.images_to_pixels(images)
    except MlflowException as error:
        raise ValueError(error.message) from None


def _npy_images(path: Path):
    """(count, read) of a .npy file whose header matches its size: how many images it holds, and
    ``read(start, stop)`` reading those images from disk. Nothing more than a chunk is ever in memory."""
    shape, dtype, offset = data.read_npy_header(path)
    if shape in IMAGE_SHAPES:
        shape = (1, *shape)
    if shape[1:] not in IMAGE_SHAPES:
        raise ValueError(f"images must be shaped (N, 28, 28) or (N, 784), got {shape}")
    if shape[0] == 0:
        raise ValueError(f"the array holds no images (shape {shape})")
    _checked_pixels(np.empty((0, FRAME, FRAME), dtype))  # Its dtype, before any of its data is read.

    def read(start: int, stop: int) -> np.ndarray:
        wanted = (stop - start) * FRAME * FRAME
        try:
            flat = np.fromfile(path, dtype=dtype, count=wanted, offset=offset + start * FRAME * FRAME * dtype.itemsize)
        except OSError as error:
            raise ValueError(f"cannot read images {start} to {stop - 1} ({error})") from None
        if flat.size != wanted:  # It matched its header when it was opened: it changed since.
            missing = start + flat.size // (FRAME * FRAME)
            raise ValueError(f"it was cut short while being read: image {missing} on is missing")
        return _checked_pixels(flat.reshape(-1, FRAME, FRAME))

    return shape[0], read


def _picture_levels(path: Path) -> np.ndarray:
    """A PNG or JPEG file's grey levels (``grey_levels``); ValueError saying what is wrong with it."""
    try:
        with Image.open(path, formats=FORMATS) as image:
            width, height = image.size
            levels = grey_levels(image) if width * height <= MAX_PIXELS else None
    except UnidentifiedImageError:
        raise ValueError("not an image (PNG or JPEG) nor a .npy array") from None
    except Image.DecompressionBombError as error:  # Pillow's own limit, met while opening.
        raise ValueError(f"the image is too large to decode ({error})") from None
    except Exception as error:
        # A damaged file fails in whichever part of Pillow meets the damage first, with that
        # part's error: OSError mostly, SyntaxError for a garbled PNG chunk, struct.error for a
        # garbled EXIF block in a JPEG. Whichever it is, it is this file's error and no other's.
        raise ValueError(f"cannot read the image ({error or type(error).__name__})") from None
    if levels is None:
        raise ValueError(
            f"the image is {width} x {height} pixels, more than the {MAX_PIXELS:,} kdflow decodes; scale it down first"
        )
    return levels


def read_images(path: Path) -> tuple[int, Callable[[int, int], np.ndarray]]:
    """(count, read) of one file's digits, checked: how many it holds, and ``read(start, stop)``
    giving those digits as float32 pixels in [0, 1]; ValueError saying what is wrong with the file.

    A ``.npy`` file is checked whole, and later read again a chunk at a time, so its size does not matter.
    """
    if not path.is_file():
        raise ValueError("no such file")
    if path.suffix.lower() == ".npy":
        count, read = _npy_images(path)
        for start in range(0, count, registry.CHUNK):
            read(start, min(start + registry.CHUNK, count))  # Checks the values.
        return count, read
    digit = to_mnist(_picture_levels(path))[np.newaxis]
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


def _file_images(path: Path) -> Iterator[tuple[str, np.ndarray] | dict]:
    """(name, pixels) of each image of one file, in order; then, if reading it failed, at once or
    part-way, the file's error as its answer."""
    try:
        count, read = read_images(path)
        several = path.suffix.lower() == ".npy" and count > 1
        for start in range(0, count, registry.CHUNK):
            for index, image in enumerate(read(start, min(start + registry.CHUNK, count)), start):
                yield (f"{path}[{index}]" if several else str(path)), image
    except ValueError as error:
        yield {"file": str(path), "error": str(error)}


def predict_files(model, files: list[Path]) -> Iterator[dict]:
    """One answer per image (a .npy file may hold several), or one error per unreadable file, in
    order. Images are answered ``registry.CHUNK`` at a time, so memory stays bounded."""
    # In file order: (name, image) not answered yet, and the errors of the files among them, which
    # wait with the images rather than cost a call of the model each.
    pending = []

    def answer_pending() -> list[dict]:
        images = [item for item in pending if isinstance(item, tuple)]
        answers = iter([])
        if images:
            predictions = model.predict(np.stack([image for _, image in images]), params={registry.PROBABILITIES: True})
            answers = (
                {"file": name, "digit": int(digit), "probability": float(probabilities[digit])}
                for (name, _), digit, probabilities in zip(images, predictions["digit"], predictions["probabilities"])
            )
        in_order = [item if isinstance(item, dict) else next(answers) for item in pending]
        pending.clear()
        return in_order

    images_pending = 0
    for path in files:
        # The model is called outside _file_images, so that an error of the model is never taken
        # for an error of the file being read.
        for item in _file_images(path):
            pending.append(item)
            images_pending += isinstance(item, tuple)
            if images_pending == registry.CHUNK:
                yield from answer_pending()
                images_pending = 0
    yield from answer_pending()
