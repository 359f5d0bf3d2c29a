"""Files that are damaged, that lie about themselves, or that must be read as a person sees them.

Each damaged file is that file's error and costs no other file its answer; pictures are read as
any viewer shows them. Answers are compared with the session store's champion called directly
on the MNIST images themselves (40-step runs: agreement is judged, not accuracy).
"""

import io
import os
import random

import mlflow
import numpy as np
import pytest
from PIL import Image

from kdflow import predict, registry
from tests.conftest import short_champion_uri

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("project_store")]  # tests/conftest.py says why


def test_every_damaged_png_is_its_own_error_and_the_next_file_is_answered(store, raw_mnist, tmp_path):
    """3,000 seeded random corruptions of a real PNG digit, each followed by a good digit."""
    damaged_digit, good_digit = raw_mnist["x_test"][:2]
    buffer = io.BytesIO()
    Image.fromarray(damaged_digit).save(buffer, format="PNG")
    original = buffer.getvalue()
    good = tmp_path / "good.png"
    Image.fromarray(good_digit).save(good)
    rng = random.Random(12)
    files = []
    for index in range(3_000):
        damaged = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path = tmp_path / f"damaged{index:04d}.png"
        path.write_bytes(damaged)
        files += [path, good]
    model = mlflow.pyfunc.load_model(short_champion_uri())
    answers = list(predict.predict_files(model, files))  # Never raises.
    # One answer or one error per file, in order.
    assert [answer["file"] for answer in answers] == [str(path) for path in files]
    assert all(("digit" in answer) != ("error" in answer) for answer in answers)
    (expected,) = model.predict(good_digit[np.newaxis])
    assert {answer.get("digit") for answer in answers[1::2]} == {expected}
    errors = [answer["error"] for answer in answers[::2] if "error" in answer]
    # Most copies are refused, some still decode (the damage fell where Pillow does not look), and
    # the refused include garbled chunks, which Pillow reports with a SyntaxError, not an OSError.
    assert 2_500 < len(errors) < 3_000
    assert sum("cannot read the image (broken PNG file" in error for error in errors) >= 5, errors


def test_a_npy_file_cut_short_while_read_keeps_the_answers_before_the_cut(store, raw_mnist, tmp_path):
    images = np.resize(raw_mnist["x_test"], (registry.CHUNK + 5, 28, 28))
    path = tmp_path / "many.npy"
    np.save(path, images)
    good = tmp_path / "good.png"
    Image.fromarray(images[0]).save(good)
    model = mlflow.pyfunc.load_model(short_champion_uri())
    answers = predict.predict_files(model, [path, good])
    first = next(answers)  # The first chunk is answered: the file is read from disk again for the next.
    os.truncate(path, path.stat().st_size - 3 * 28 * 28)
    rest = list(answers)
    answered, error, last = [first, *rest[: registry.CHUNK - 1]], rest[-2], rest[-1]
    assert [answer["file"] for answer in answered] == [f"{path}[{index}]" for index in range(registry.CHUNK)]
    assert [answer["digit"] for answer in answered] == model.predict(images[: registry.CHUNK]).tolist()
    assert error == {"file": str(path), "error": "it was cut short while being read: image 10002 on is missing"}
    assert last["file"] == str(good) and last["digit"] == answered[0]["digit"]


def test_pictures_are_read_as_a_viewer_shows_them(store, raw_mnist, tmp_path):
    digits = raw_mnist["x_test"][:20]
    files = []
    for index, digit in enumerate(digits):
        # Stored sideways, with the EXIF orientation that tells a viewer how to turn it upright:
        # 6 says turn it 90 degrees clockwise, 8 counter-clockwise.
        orientation, stored = (6, Image.Transpose.ROTATE_90) if index % 2 else (8, Image.Transpose.ROTATE_270)
        exif = Image.Exif()
        exif[0x0112] = orientation
        files.append(tmp_path / f"sideways{index:02d}.png")
        Image.fromarray(digit).transpose(stored).save(files[-1], exif=exif)
        # Dark ink on white in 16 bits per pixel: 65535 is white.
        files.append(tmp_path / f"sixteen-bit{index:02d}.png")
        Image.fromarray((255 - digit.astype(np.uint16)) * 257).save(files[-1])
    for level in (0, 255):  # Blank pages, black and white, of MNIST's own size.
        files.append(tmp_path / f"blank{level}.png")
        Image.new("L", (28, 28), level).save(files[-1])
    model = mlflow.pyfunc.load_model(short_champion_uri())
    answers = {answer["file"]: answer for answer in predict.predict_files(model, files)}
    assert Image.open(files[0]).mode == "L" and Image.open(files[1]).mode == "I;16"
    expected = model.predict(digits).tolist()
    assert [answers[str(tmp_path / f"sideways{index:02d}.png")]["digit"] for index in range(20)] == expected
    assert [answers[str(tmp_path / f"sixteen-bit{index:02d}.png")]["digit"] for index in range(20)] == expected
    for level in (0, 255):
        assert answers[str(tmp_path / f"blank{level}.png")]["error"] == "no digit found: the image is blank"
