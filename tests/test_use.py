"""Using the registered student: `kdflow-predict` on image files, and `mlflow models serve` over HTTP.

The model is the champion of the session's project store (40-step runs, so its answers are often
wrong); every check compares against that same model called directly, not against the labels.
"""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from kdflow import predict
from scripts.servers import free_port
from tests.conftest import MLFLOW, SHORT_CHAMPION_URI, serving, succeeded

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("project_store")]  # tests/conftest.py says why

PREDICT = str(Path(sys.executable).parent / "kdflow-predict")


@pytest.fixture(scope="module")
def test_images(raw_mnist):
    """Twenty-three MNIST test images, uint8 (N, 28, 28), as read by the test, not by kdflow."""
    return raw_mnist["x_test"][:23]


def champion_digits(images: np.ndarray) -> list[int]:
    return mlflow.pyfunc.load_model(SHORT_CHAMPION_URI).predict(images)["digit"].tolist()


def write_digits(folder: Path, images: np.ndarray) -> Path:
    """The first 20 images as grey PNG files, the last 3 as one .npy array, all in ``folder``."""
    folder.mkdir()
    for index, image in enumerate(images[:20]):
        Image.fromarray(image).save(folder / f"digit{index:02d}.png")
    np.save(folder / "batch.npy", images[20:])
    return folder


def test_predict_answers_each_file_and_names_the_bad_ones(store, test_images, tmp_path):
    folder = write_digits(tmp_path / "digits", test_images)
    (folder / "notes.png").write_text("not a picture")
    np.save(folder / "small.npy", np.zeros((2, 27, 27), dtype=np.uint8))
    missing = tmp_path / "missing.png"
    command = [PREDICT, "--json", "--model_uri", SHORT_CHAMPION_URI, str(folder), str(missing)]
    process = subprocess.run(command, env=store.env, capture_output=True, text=True)
    assert process.returncode == 1, process.stderr[-3000:]
    answers = [json.loads(line) for line in process.stdout.splitlines()]
    errors = {Path(answer["file"]).name: answer["error"] for answer in answers if "error" in answer}
    assert errors.keys() == {"notes.png", "small.npy", "missing.png"}
    assert "not an image" in errors["notes.png"] and "(2, 27, 27)" in errors["small.npy"]
    assert errors["missing.png"] == "no such file"
    assert "3 of 26 files could not be read" in process.stderr
    digits = {answer["file"]: answer["digit"] for answer in answers if "digit" in answer}
    expected = champion_digits(test_images)
    assert [digits[str(folder / f"digit{index:02d}.png")] for index in range(20)] == expected[:20]
    assert [digits[f"{folder / 'batch.npy'}[{index}]"] for index in range(3)] == expected[20:]
    assert all(0.1 <= answer["probability"] <= 1.0 for answer in answers if "digit" in answer)


def test_predict_entry_point_keeps_its_answers_in_the_run(store, test_images, tmp_path):
    folder = write_digits(tmp_path / "digits", test_images)
    process = succeeded(store.run("predict", images=folder, model_uri=SHORT_CHAMPION_URI))
    assert f"{folder / 'digit00.png'}: " in process.stdout
    (run,) = store.runs("predict")
    answers = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/predictions.json")
    expected = champion_digits(test_images)
    # A folder is read in name order: batch.npy (the last three images) before digit00.png.
    assert [answer["digit"] for answer in answers] == expected[20:] + expected[:20]

    process = store.run("predict", images=folder, model_uri="models:/nope@champion")
    assert process.returncode != 0 and "kdflow predict: error: model_uri" in process.stderr
    # With no champion of kdtf's setup yet, the default says so and names the champions there are.
    process = subprocess.run([PREDICT, str(folder)], env=store.env, capture_output=True, text=True)
    assert process.returncode == 2 and "'models:/kd-student@champion' does not resolve" in process.stderr
    assert f"kd-student has the aliases: {SHORT_CHAMPION_URI.rsplit('@', 1)[1]}" in process.stderr
    assert len(store.runs("predict", status="FAILED")) == 1
    assert store.runs("predict", status="RUNNING") == []


def test_predict_refuses_what_it_cannot_safely_read_and_answers_the_rest(store, test_images, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(test_images[0]).save(folder / "good.png")
    # A 12,000 x 12,000 page is a small PNG file but would decode to 144 million pixels.
    Image.new("L", (12_000, 12_000), 255).save(folder / "huge.png")
    Image.fromarray(test_images[1]).save(folder / "gif-inside.png", format="GIF")  # Only PNG and JPEG are decoded.
    Image.fromarray(test_images[2]).save(tmp_path / "drawing.eps")  # EPS would start Ghostscript.
    np.save(folder / "nan.npy", np.full((2, 28, 28), np.nan, dtype=np.float32))
    np.savez(folder / "archive.npz", images=test_images[:2])
    (folder / "archive.npz").rename(folder / "archive.npy")  # A zip archive under a .npy name.
    command = [PREDICT, "--json", "--model_uri", SHORT_CHAMPION_URI, str(folder), str(tmp_path / "drawing.eps")]
    process = subprocess.run(command, env=store.env, capture_output=True, text=True)
    assert process.returncode == 1, process.stderr[-3000:]
    answers = {Path(answer["file"]).name: answer for answer in map(json.loads, process.stdout.splitlines())}
    assert answers["good.png"]["digit"] == champion_digits(test_images[:1])[0]
    assert "12000 x 12000 pixels" in answers["huge.png"]["error"]
    assert "not an image (PNG or JPEG)" in answers["gif-inside.png"]["error"]
    assert "not an image (PNG or JPEG)" in answers["drawing.eps"]["error"]
    assert "NaN" in answers["nan.npy"]["error"] and "not a readable .npy array" in answers["archive.npy"]["error"]

    empty = tmp_path / "empty"
    empty.mkdir()
    process = subprocess.run([PREDICT, "--model_uri", SHORT_CHAMPION_URI, str(empty)], env=store.env, capture_output=True, text=True)
    assert process.returncode == 2 and f"images: {empty} holds no PNG, JPEG or .npy file" in process.stderr


def peak_memory_mib(command: list[str], env: dict) -> float:
    """The largest resident size the process reached, as the kernel accounts it."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, process.stderr.read()[-3000:]
    return usage.ru_maxrss / 1024


def test_predict_memory_stays_flat_as_the_input_grows(store, test_images, tmp_path):
    """1,000 and 20,000 images (16 MB of bytes, 63 MB as float pixels): the same peak, give or take.
    (benchmarks/bench_inference.py measures 100,000.)"""
    peaks = {}
    for count in (1_000, 20_000):
        path = tmp_path / f"images{count}.npy"
        np.save(path, np.resize(test_images, (count, 28, 28)))
        peaks[count] = peak_memory_mib([PREDICT, "--model_uri", SHORT_CHAMPION_URI, str(path)], store.env)
    assert peaks[20_000] - peaks[1_000] < 40, peaks


def read_all(path: Path) -> np.ndarray:
    count, read = predict.read_images(path)
    return read(0, count)


def test_pictures_become_mnist_digits(test_images, tmp_path):
    # A large photo-like JPEG of a dark digit on light paper comes back close to the MNIST original.
    similarities = []
    for index, image in enumerate(test_images[:20]):
        path = tmp_path / f"large{index}.jpg"
        Image.fromarray(255 - image).resize((280, 280), Image.Resampling.BILINEAR).convert("RGB").save(path)
        (digit,) = read_all(path)
        similarities.append(np.corrcoef(digit.ravel(), image.ravel())[0, 1])
    assert np.mean(similarities) > 0.9, similarities
    # Black ink on a transparent page is read as if the page were white.
    ink = Image.new("RGBA", (28, 28), "black")
    ink.putalpha(Image.fromarray(test_images[0]))
    ink.save(tmp_path / "transparent.png")
    (digit,) = read_all(tmp_path / "transparent.png")
    assert np.abs(digit - test_images[0] / 255.0).max() < 0.01
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    with pytest.raises(ValueError, match="blank"):
        predict.read_images(tmp_path / "blank.png")


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_served_champion_answers_mlflow_json_formats(store, test_images):
    url = f"http://127.0.0.1:{free_port()}"
    command = [MLFLOW, "models", "serve", "-m", SHORT_CHAMPION_URI, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    images = test_images[:5]
    expected = champion_digits(images)
    with serving(command, f"{url}/ping", env=store.env):
        pixel_columns = [f"pixel{index}" for index in range(784)]
        for body in (
            {"inputs": images.tolist()},  # 0-255 integers, (N, 28, 28)
            {"instances": (images / 255.0).tolist()},  # floats in [0, 1]
            {"dataframe_split": {"columns": pixel_columns, "data": images.reshape(-1, 784).tolist()}},
        ):
            status, answer = post(f"{url}/invocations", body)
            assert status == 200, answer
            assert [row["digit"] for row in answer["predictions"]] == expected
            assert all(abs(sum(row["probabilities"]) - 1.0) < 1e-6 for row in answer["predictions"])
        status, answer = post(f"{url}/invocations", {"inputs": np.zeros((2, 27, 27), dtype=int).tolist()})
        assert status == 400 and "got (2, 27, 27)" in answer["message"]
        status, answer = post(f"{url}/invocations", {"inputs": [["white"] * 784]})
        assert status == 400 and "integers 0-255 or floats 0-1" in answer["message"]
        status, answer = post(f"{url}/invocations", {"inputs": [[float("nan")] * 784]})  # Python's JSON says NaN.
        assert status == 400 and "NaN or infinite" in answer["message"]
