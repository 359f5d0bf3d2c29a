"""Inference speed of the registered student, as ratios against a bare Keras baseline in this script.

Command (about 2 minutes on 2 cores, no GPU), from the project root in the README's environment:

    python benchmarks/bench_inference.py

1. Throughput on the 10,000 MNIST test images: ``mlflow.pyfunc`` ``predict`` of
   the champion ``kd-student`` of its setup (uint8 images in; input checks, softmax and a DataFrame out)
   against Keras ``model.predict`` of the same network and weights on the same images, already
   as float32. Target: pyfunc >= 0.8 of bare Keras. Each is timed several times, alternating; the
   median counts, since the machine is shared and noisy.
2. Latency of ``mlflow models serve`` over loopback: median and 99th percentile of a JSON
   ``inputs`` request of 1 image and of 100 images, one request at a time.
3. Peak memory of ``kdflow-predict`` answering 1,000 and 100,000 images from a ``.npy`` file:
   it should stay flat, since files are read and answered a chunk at a time.

The student is trained for a few steps into a throw-away store: speed does not depend on weights.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kdflow import registry  # noqa: E402  (the project root is on the path only from here)
from kdflow.config import Config  # noqa: E402
from scripts import servers  # noqa: E402

# The champion of the throw-away 50-step student's setup; speed does not depend on the weights.
MODEL_URI = f"models:/kd-student@{registry.champion_alias('distill', Config(num_steps=50, eval_every=50).resolved())}"
REPEATS = 15
REQUESTS = 300
PEAK_COUNTS = (1_000, 100_000)


def median_seconds(function, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(images: np.ndarray) -> dict[str, float]:
    import mlflow

    model = mlflow.pyfunc.load_model(MODEL_URI)
    keras_model = model.unwrap_python_model().keras_model
    pixels = images.astype(np.float32) / 255.0
    model.predict(images[:10]), keras_model.predict(pixels[:10], verbose=0)  # Build and trace first.
    pyfunc_times, keras_times, keras_default_times = [], [], []
    for _ in range(REPEATS):  # Alternate, so that a noisy moment hits both.
        pyfunc_times.append(median_seconds(lambda: model.predict(images), 1))
        keras_times.append(median_seconds(lambda: keras_model.predict(pixels, batch_size=len(pixels), verbose=0), 1))
        keras_default_times.append(median_seconds(lambda: keras_model.predict(pixels, verbose=0), 1))
    return {
        "pyfunc": len(images) / statistics.median(pyfunc_times),
        "keras": len(images) / statistics.median(keras_times),
        "keras_batch_32": len(images) / statistics.median(keras_default_times),
    }


def latencies(url: str, images: np.ndarray, batch: int) -> tuple[float, float]:
    body = json.dumps({"inputs": images[:batch].tolist()}).encode()
    times = []
    for index in range(REQUESTS + 10):
        request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request) as response:
            assert response.status == 200 and len(json.load(response)["predictions"]) == batch
        if index >= 10:  # The first requests warm the server up.
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), 1000 * float(np.percentile(times, 99))


def serve(env: dict, port: int) -> subprocess.Popen:
    mlflow_command = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow_command, "models", "serve", "-m", MODEL_URI, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        servers.wait_until_answers(f"http://127.0.0.1:{port}/ping", server)
    except RuntimeError as error:
        server.kill()
        raise RuntimeError(f"mlflow models serve did not start ({error})") from None
    return server


def predict_peak_mib(images: np.ndarray, count: int, folder: str, env: dict) -> float:
    """The peak resident memory of kdflow-predict answering ``count`` images from one .npy file."""
    path = Path(folder) / f"images{count}.npy"
    np.save(path, np.resize(images, (count, 28, 28)))
    command = [str(Path(sys.executable).parent / "kdflow-predict"), "--model_uri", MODEL_URI, str(path)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, command
    return usage.ru_maxrss / 1024


def main() -> None:
    from kdflow import data

    splits = data.load_dataset("mnist")
    images = (splits.test_images * 255).round().astype(np.uint8)  # Raw MNIST bytes, as a user sends them.
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        subprocess.run(
            [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", "student", "--env-manager", "local",
             "-P", "num_steps=50", "-P", "eval_every=50"],
            cwd=folder, env=env, check=True, capture_output=True,
        )
        speeds = throughput(images)
        peaks = {count: predict_peak_mib(images, count, folder, env) for count in PEAK_COUNTS}
        port = servers.free_port()
        server = serve(env, port)
        try:
            single = latencies(f"http://127.0.0.1:{port}", images, 1)
            hundred = latencies(f"http://127.0.0.1:{port}", images, 100)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"pyfunc predict, 10,000 test images: {speeds['pyfunc']:,.0f} images/s")
    print(f"Keras model.predict, one batch of 10,000: {speeds['keras']:,.0f} images/s")
    print(f"  ratio pyfunc / Keras: {speeds['pyfunc'] / speeds['keras']:.2f} (target >= 0.8)")
    print(f"Keras model.predict, default batches of 32: {speeds['keras_batch_32']:,.0f} images/s")
    print(f"mlflow models serve, batch of 1: median {single[0]:.1f} ms, p99 {single[1]:.1f} ms ({REQUESTS} requests)")
    print(f"mlflow models serve, batch of 100: median {hundred[0]:.1f} ms, p99 {hundred[1]:.1f} ms ({REQUESTS} requests)")
    small, large = PEAK_COUNTS
    print(f"kdflow-predict peak memory: {peaks[small]:.0f} MiB for {small:,} images, {peaks[large]:.0f} MiB for {large:,} "
          f"({large * 784 / 2**20:.0f} MiB of bytes): x{peaks[large] / peaks[small]:.2f} (flat: the images are read, "
          "checked and answered 10,000 at a time)")


if __name__ == "__main__":
    main()
