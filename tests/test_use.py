"""Using the registered student: `kdflow-predict` on image files, and `mlflow models serve` over HTTP.

The model is the champion of the session's project store (40-step runs, so its answers are often
wrong); every check compares against that same model called directly, not against the labels.
"""

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kdflow import predict
from scripts.servers import free_port
from tests.conftest import MLFLOW, run_id_of, serving, short_champion_uri, succeeded

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("project_store")]  # tests/conftest.py says why

PREDICT = str(Path(sys.executable).parent / "kdflow-predict")


@pytest.fixture(scope="module")
def test_images(raw_mnist):
    """Twenty-three MNIST test images, uint8 (N, 28, 28), as read by the test, not by kdflow."""
    return raw_mnist["x_test"][:23]


def champion_digits(images: np.ndarray) -> list[int]:
    return mlflow.pyfunc.load_model(short_champion_uri()).predict(images).tolist()


def damaged_png(path: Path, image: np.ndarray) -> None:
    """A PNG of ``image`` whose IDAT chunk says it is 40 bytes shorter than it is: Pillow then takes
    bytes of the image data for the next chunk's type, as it does for many a random corruption."""
    image_file = path.with_suffix(".tmp.png")
    Image.fromarray(image).save(image_file)
    content = image_file.read_bytes()
    image_file.unlink()
    at = content.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", content[at : at + 4])
    path.write_bytes(content[:at] + struct.pack(">I", length - 40) + content[at + 4 :])


def write_npy(path: Path, shape: tuple, data: bytes) -> None:
    """A .npy file with a real header for uint8 ``shape``, followed by ``data`` whatever it holds."""
    with path.open("wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "|u1", "fortran_order": False, "shape": shape})
        file.write(data)


def write_digits(folder: Path, images: np.ndarray) -> Path:
    """The first 20 images as grey PNG files, the last 3 as one .npy array, all in ``folder``."""
    folder.mkdir()
    for index, image in enumerate(images[:20]):
        Image.fromarray(image).save(folder / f"digit{index:02d}.png")
    np.save(folder / "batch.npy", images[20:])
    return folder


def test_mlflow_evaluates_the_champion_as_a_user_types_it(store, raw_mnist):
    # A DataFrame of the 784 pixel columns and a label column, as MLflow users pass their data.
    images, labels = raw_mnist["x_test"][:500], raw_mnist["y_test"][:500]
    data = pd.DataFrame(images.reshape(-1, 784), columns=[f"pixel{index}" for index in range(784)]).assign(label=labels)
    # In an experiment of its own: the project's holds only kdflow's runs. Not set_experiment, which
    # exports MLFLOW_EXPERIMENT_ID to every process the later tests of this worker start.
    client = mlflow.MlflowClient()
    evaluations = client.get_experiment_by_name("evaluations")
    experiment_id = evaluations.experiment_id if evaluations else client.create_experiment("evaluations")
    with mlflow.start_run(experiment_id=experiment_id):
        result = mlflow.models.evaluate(short_champion_uri(), data, targets="label", model_type="classifier")
    accuracy = np.mean(np.array(champion_digits(images)) == labels)
    assert result.metrics["accuracy_score"] == pytest.approx(accuracy)
    assert {"precision_score", "recall_score", "f1_score"} <= set(result.metrics)
    assert {"confusion_matrix", "per_class_metrics"} <= set(result.artifacts)
    per_class = result.artifacts["per_class_metrics"].content
    assert sorted(per_class["positive_class"]) == list(range(10)) and {"precision_score", "recall_score", "f1_score"} <= set(per_class)


def test_the_champion_run_evaluated_what_its_logged_model_answers(store, raw_mnist):
    # The run hands MLflow the digits its network gave for its test score; the model it logged,
    # loaded back as a user loads it, answers the same on all 10,000 test images, but for a near
    # tie that float32 rounding may break the other way: the run scales bytes by 1/255 and calls
    # predict_on_batch, the pyfunc divides by 255 and calls the network eagerly.
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("kd-student", short_champion_uri().rsplit("@", 1)[1])
    metrics = client.get_run(version.run_id).data.metrics
    digits = np.array(champion_digits(raw_mnist["x_test"]))
    assert metrics["example_count"] == len(digits) == 10_000
    assert abs(metrics["accuracy_score"] - np.mean(digits == raw_mnist["y_test"])) <= 2 / 10_000
    assert metrics["test_accuracy"] == metrics["accuracy_score"]


def test_predict_answers_each_file_and_names_the_bad_ones(store, test_images, tmp_path):
    folder = write_digits(tmp_path / "digits", test_images)
    (folder / "notes.png").write_text("not a picture")
    np.save(folder / "small.npy", np.zeros((2, 27, 27), dtype=np.uint8))
    missing = tmp_path / "missing.png"
    command = [PREDICT, "--json", "--model_uri", short_champion_uri(), str(folder), str(missing)]
    process = subprocess.run(command, env=store.env, capture_output=True, text=True)
    assert process.returncode == 1, process.stderr[-3000:]
    answers = [json.loads(line) for line in process.stdout.splitlines()]
    errors = {Path(answer["file"]).name: answer["error"] for answer in answers if "error" in answer}
    assert errors.keys() == {"notes.png", "small.npy", "missing.png"}
    assert "not an image" in errors["notes.png"] and "(2, 27, 27)" in errors["small.npy"]
    assert errors["missing.png"] == "no such file"
    assert "3 of 24 files could not be read" in process.stderr  # 20 PNG files, 2 .npy, notes.png, missing.png
    digits = {answer["file"]: answer["digit"] for answer in answers if "digit" in answer}
    expected = champion_digits(test_images)
    assert [digits[str(folder / f"digit{index:02d}.png")] for index in range(20)] == expected[:20]
    assert [digits[f"{folder / 'batch.npy'}[{index}]"] for index in range(3)] == expected[20:]
    assert all(0.1 <= answer["probability"] <= 1.0 for answer in answers if "digit" in answer)


def test_predict_entry_point_keeps_its_answers_in_the_run(store, test_images, tmp_path):
    failed_before = len(store.runs("predict", status="FAILED"))
    folder = write_digits(tmp_path / "digits", test_images)
    expected = champion_digits(test_images)
    process = succeeded(store.run("predict", images=folder, model_uri=short_champion_uri()))
    answers = mlflow.artifacts.load_dict(f"{mlflow.get_run(run_id_of(process)).info.artifact_uri}/predictions.json")
    assert [answer["digit"] for answer in answers] == expected[20:] + expected[:20]

    damaged_png(folder / "damaged.png", test_images[0])
    process = store.run("predict", images=folder, model_uri=short_champion_uri())
    # A file that cannot be read fails the run, and every answer is still printed and kept in it.
    assert process.returncode != 0 and "1 of 22 files could not be read" in process.stderr, process.stderr[-3000:]
    assert f"{folder / 'digit00.png'}: " in process.stdout
    (run_id,) = re.findall(r"Run \(ID '(\w+)'\) failed", process.stderr)
    run = mlflow.get_run(run_id)
    answers = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/predictions.json")
    # A folder is read in name order: batch.npy (the last three images), damaged.png, digit00.png, ...
    assert [answer.get("digit") for answer in answers] == expected[20:] + [None] + expected[:20]
    assert answers[3]["file"] == str(folder / "damaged.png") and "broken PNG file" in answers[3]["error"]

    process = store.run("predict", images=folder, model_uri="models:/nope@champion")
    assert process.returncode != 0 and "kdflow predict: error: model_uri" in process.stderr
    # With no champion of kdtf's setup yet, the default says so and names the champions there are.
    process = subprocess.run([PREDICT, str(folder)], env=store.env, capture_output=True, text=True)
    assert process.returncode == 2 and "'models:/kd-student@champion' does not resolve" in process.stderr
    assert f"kd-student has the aliases: {short_champion_uri().rsplit('@', 1)[1]}" in process.stderr
    assert len(store.runs("predict", status="FAILED")) == failed_before + 2
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
    damaged_png(folder / "damaged.png", test_images[3])
    # .npy headers that promise other than what follows them: a trillion images in 912 bytes, 100
    # images in the bytes of 50, no images, and a negative count.
    write_npy(folder / "trillion.npy", (10**12, 784), bytes(784))
    write_npy(folder / "half.npy", (100, 28, 28), np.resize(test_images, (50, 28, 28)).tobytes())
    write_npy(folder / "none.npy", (0, 28, 28), b"")
    write_npy(folder / "negative.npy", (-1, 784), bytes(784))
    assert (folder / "trillion.npy").stat().st_size == 912
    command = [PREDICT, "--json", "--model_uri", short_champion_uri(), str(folder), str(tmp_path / "drawing.eps")]
    process = subprocess.run(command, env=store.env, capture_output=True, text=True)
    assert process.returncode == 1, process.stderr[-3000:]
    answers = {Path(answer["file"]).name: answer for answer in map(json.loads, process.stdout.splitlines())}
    assert answers["good.png"]["digit"] == champion_digits(test_images[:1])[0]
    assert "12000 x 12000 pixels" in answers["huge.png"]["error"]
    assert "not an image (PNG or JPEG)" in answers["gif-inside.png"]["error"]
    assert "not an image (PNG or JPEG)" in answers["drawing.eps"]["error"]
    assert "NaN" in answers["nan.npy"]["error"] and "not a readable .npy array" in answers["archive.npy"]["error"]
    assert "cannot read the image (broken PNG file" in answers["damaged.png"]["error"]
    assert "promises shape (1000000000000, 784) of uint8" in answers["trillion.npy"]["error"]
    assert "(100, 28, 28) of uint8 (78,400 bytes)" in answers["half.npy"]["error"]
    assert "holds 39,200 bytes" in answers["half.npy"]["error"]
    assert answers["none.npy"]["error"] == "the array holds no images (shape (0, 28, 28))"
    assert "impossible shape (-1, 784)" in answers["negative.npy"]["error"]
    assert len(answers) == 11  # One line for each file: no answers from the files refused.

    empty = tmp_path / "empty"
    empty.mkdir()
    process = subprocess.run([PREDICT, "--model_uri", short_champion_uri(), str(empty)], env=store.env, capture_output=True, text=True)
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
        peaks[count] = peak_memory_mib([PREDICT, "--model_uri", short_champion_uri(), str(path)], store.env)
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
        text = error.read().decode()  # uvicorn's own refusals are plain text.
        return error.code, json.loads(text) if error.headers.get_content_type() == "application/json" else {"message": text}


def test_served_champion_answers_mlflow_json_formats(store, test_images):
    url = f"http://127.0.0.1:{free_port()}"
    host, port = url.removeprefix("http://").split(":")
    command = [MLFLOW, "models", "serve", "-m", short_champion_uri(), "--env-manager", "local", "-h", host, "-p", port]
    images = test_images[:5]
    expected = champion_digits(images)
    # As the README serves it: at most two requests at a time (uvicorn counts the one it refuses).
    with serving(command, f"{url}/ping", env={**store.env, "UVICORN_LIMIT_CONCURRENCY": "3"}):
        pixel_columns = [f"pixel{index}" for index in range(784)]
        pixels = images.reshape(-1, 784)
        for body in (
            {"inputs": images.tolist()},  # 0-255 integers, (N, 28, 28)
            {"instances": (images / 255.0).tolist()},  # floats in [0, 1]
            {"dataframe_split": {"columns": pixel_columns, "data": pixels.tolist()}},
            # Columns are matched by name, in any order; pandas' own positions 0 to 783 are in order.
            {"dataframe_split": {"columns": pixel_columns[::-1], "data": pixels[:, ::-1].tolist()}},
            {"dataframe_split": {"data": pixels.tolist()}},
        ):
            status, answer = post(f"{url}/invocations", body)
            assert status == 200, answer
            assert answer["predictions"] == expected
        # Asked for, each answer carries the ten probabilities beside its digit.
        status, answer = post(f"{url}/invocations", {"inputs": images.tolist(), "params": {"probabilities": True}})
        assert status == 200, answer
        assert [row["digit"] for row in answer["predictions"]] == expected
        assert all(abs(sum(row["probabilities"]) - 1.0) < 1e-6 for row in answer["predictions"])
        wrong_names = {"dataframe_split": {"columns": [f"p{index}" for index in range(784)], "data": pixels.tolist()}}
        status, answer = post(f"{url}/invocations", wrong_names)
        assert status == 400 and "pixel0, pixel1, ..., pixel783" in answer["message"] and "'p0'" in answer["message"]
        # Binarised digits are answered as floats 0 and 1; as integers 0 and 1 they would be read as
        # almost black, and are refused saying how to send them. A blank image is answered.
        binarised = images > 127
        status, answer = post(f"{url}/invocations", {"inputs": binarised.astype(float).tolist()})
        assert status == 200, answer
        assert answer["predictions"] == champion_digits(binarised.astype(np.float32))
        status, answer = post(f"{url}/invocations", {"inputs": binarised.astype(int).tolist()})
        assert status == 400 and "as integers 0 and 255, or as floats 0.0 and 1.0" in answer["message"]
        status, answer = post(f"{url}/invocations", {"inputs": np.zeros((1, 784), dtype=int).tolist()})
        assert status == 200, answer
        status, answer = post(f"{url}/invocations", {"inputs": np.zeros((2, 27, 27), dtype=int).tolist()})
        assert status == 400 and "got (2, 27, 27)" in answer["message"]
        status, answer = post(f"{url}/invocations", {"inputs": [["white"] * 784]})
        assert status == 400 and "integers 0-255 or floats 0-1" in answer["message"]
        status, answer = post(f"{url}/invocations", {"inputs": [[float("nan")] * 784]})  # Python's JSON says NaN.
        assert status == 400 and "NaN or infinite" in answer["message"]

        # Two requests still sending their bodies: a third is refused before it is read.
        waiting = [socket.create_connection((host, int(port))) for _ in range(2)]
        for connection in waiting:
            connection.sendall(f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                               "Content-Length: 1000\r\n\r\n".encode())
        time.sleep(0.5)
        status, answer = post(f"{url}/invocations", {"inputs": images.tolist()})
        assert status == 503, answer
        for connection in waiting:
            connection.close()
        time.sleep(0.5)
        status, answer = post(f"{url}/invocations", {"inputs": images.tolist()})
        assert status == 200 and answer["predictions"] == expected
