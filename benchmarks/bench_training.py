"""Training speed of the core entry points in float32 and bfloat16, as ratios against baselines
run in this same script.

Command (about 9 minutes on 2 cores with native bf16, no GPU), from the project root in the README's environment:

    python benchmarks/bench_training.py [--reproduction-store DIR]

1. Teacher training throughput, per precision: the ``teacher`` entry point (``mlflow run -P
   precision=...``, its logged ``train_images_per_second``, which leaves out evaluation) against
   a bare ``tf.function`` loop of the same model, batch, optimiser and Keras dtype policy. Target:
   ratio >= 0.9. The bare loop runs before and after the entry point and the two are averaged,
   since the machine is shared and noisy. bfloat16 over float32 is the format's own speed-up.
2. Teacher inference throughput, per precision, on the 5,000 validation images (what every
   evaluation runs): kdflow's ``training.predict_logits`` against a bare ``tf.function`` call of the
   network on batches of the same size, each timed several times, alternating; the medians count.
3. Distillation wall time at equal steps (the recipe's 5000): ``teacher_signal=cached`` against
   ``online`` (the teacher runs on every batch, as kdtf did). Target: cached >= 5x faster.
4. With ``--reproduction-store``: the main reproduction's wall time at each precision, measured
   by ``benchmarks/bench_reproduction.py --store DIR --precision P`` (run once per precision, one
   after the other), read from the sweep runs in that store. Nothing is modelled.

bfloat16 pays only on hardware with native bf16 units (AVX512_BF16 or AMX on the CPU); the output
names the CPU and whether it has them. Runs go to a throw-away SQLite store in a temporary
folder; the data comes from the usual cache.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
TEACHER_STEPS = 600
DISTILL_STEPS = 5000
INFERENCE_REPEATS = 7
PRECISIONS = ("float32", "bfloat16")


def bare_teacher_images_per_second(splits, steps: int, precision: str, batch_size: int = 128) -> float:
    """The teacher's train step in a plain tf.function loop, timed from the first call like kdflow's."""
    import keras
    import tensorflow as tf

    from kdflow import losses, variants

    keras.utils.set_random_seed(12)
    teacher = variants.build_network("cnn", "normal", precision)
    optimizer = keras.optimizers.Adam(0.001)
    optimizer.build(teacher.trainable_variables)
    images = tf.constant(splits.train_images[: batch_size * 16])
    labels = tf.constant(splits.train_labels[: batch_size * 16])

    @tf.function
    def train_step(batch_images, batch_labels):
        with tf.GradientTape() as tape:
            loss = losses.hard_loss(batch_labels, teacher(batch_images, training=True), 5.0)
        gradients = tape.gradient(loss, teacher.trainable_variables)
        optimizer.apply_gradients(zip(gradients, teacher.trainable_variables))
        return loss

    start = time.perf_counter()
    for step in range(steps):
        first = (step % 16) * batch_size
        loss = train_step(images[first : first + batch_size], labels[first : first + batch_size])
    float(loss)  # Wait for the last step to finish.
    return steps * batch_size / (time.perf_counter() - start)


def inference_images_per_second(splits, precision: str) -> tuple[float, float]:
    """(kdflow's evaluation path, a bare tf.function) images/s of the teacher on the validation images."""
    import keras
    import numpy as np
    import tensorflow as tf

    from kdflow import training, variants

    keras.utils.set_random_seed(12)
    teacher = variants.build_network("cnn", "normal", precision)
    images = splits.validation_images
    bare_call = tf.function(lambda batch: teacher(batch, training=False))
    size = training.PREDICT_BATCH_SIZE

    def bare():
        return np.concatenate([bare_call(images[start : start + size]).numpy() for start in range(0, len(images), size)])

    timings = {"kdflow": [], "bare": []}
    paths = {"kdflow": lambda: training.predict_logits(teacher, images), "bare": bare}
    for path in paths.values():
        path()  # Trace and warm up once before timing.
    for _ in range(INFERENCE_REPEATS):
        for name, path in paths.items():
            started = time.perf_counter()
            path()
            timings[name].append(len(images) / (time.perf_counter() - started))
    return statistics.median(timings["kdflow"]), statistics.median(timings["bare"])


def mlflow_run(folder: Path, entry_point: str, **parameters):
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", entry_point, "--env-manager", "local"]
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
    wall_seconds = time.perf_counter() - started
    run = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time DESC"], max_results=1, output_format="list")[0]
    return run, wall_seconds


def reproduction_minutes(store: Path) -> dict[str, float]:
    """Wall minutes of the newest finished reproduction sweep per precision in a bench_reproduction store."""
    mlflow.set_tracking_uri(f"sqlite:///{store.resolve()}/mlflow.db")
    sweeps = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`kdflow.kind` = 'sweep' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], output_format="list",
    )
    minutes = {}
    for sweep in sweeps:
        minutes.setdefault(sweep.data.params.get("precision", "?"), (sweep.info.end_time - sweep.info.start_time) / 60000)
    return minutes


def cpu_description() -> str:
    from kdflow import precision

    flags = precision.cpu_flags()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    native = sorted(flags & precision.BF16_CPU_FLAGS)
    return f"{model}, {os.cpu_count()} cores, native bf16: {', '.join(native) or 'none'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reproduction-store", type=Path, help="a store both bench_reproduction runs wrote to")
    arguments = parser.parse_args()
    from kdflow import data

    splits = data.load_dataset("mnist")
    training, inference = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        for precision in PRECISIONS:
            bare_before = bare_teacher_images_per_second(splits, TEACHER_STEPS, precision)
            teacher_run, teacher_wall = mlflow_run(folder, "teacher", num_steps=TEACHER_STEPS, precision=precision)
            bare_after = bare_teacher_images_per_second(splits, TEACHER_STEPS, precision)
            training[precision] = {
                "bare": (bare_before + bare_after) / 2, "before": bare_before, "after": bare_after,
                "entry point": teacher_run.data.metrics["train_images_per_second"], "wall": teacher_wall,
            }
            inference[precision] = inference_images_per_second(splits, precision)

        teacher_uri = "models:/kd-teacher/1"  # The float32 teacher, registered first.
        cached_run, cached_wall = mlflow_run(folder, "distill", num_steps=DISTILL_STEPS, teacher=teacher_uri, precision="float32")
        online_run, online_wall = mlflow_run(
            folder, "distill", num_steps=DISTILL_STEPS, teacher=teacher_uri, teacher_signal="online", precision="float32"
        )

    print(f"command: python benchmarks/bench_training.py  ({cpu_description()})")
    print(f"1. teacher training, {TEACHER_STEPS} steps of 128 images, images/s:")
    print(f"  {'':12s} {'bare loop':>10s} {'entry point':>12s} {'ratio':>6s}  (target >= 0.90)  bare before/after  run wall")
    for precision, rates in training.items():
        print(f"  {precision:12s} {rates['bare']:10.0f} {rates['entry point']:12.0f} {rates['entry point'] / rates['bare']:6.2f}"
              f"  {rates['before']:18.0f}/{rates['after']:.0f}  {rates['wall']:6.1f} s")
    print(f"  bfloat16 / float32: bare loop {training['bfloat16']['bare'] / training['float32']['bare']:.2f}x, "
          f"entry point {training['bfloat16']['entry point'] / training['float32']['entry point']:.2f}x")
    print("2. teacher inference on the 5,000 validation images, images/s (median of "
          f"{INFERENCE_REPEATS}):")
    for precision, (kdflow_rate, bare_rate) in inference.items():
        print(f"  {precision:12s} kdflow {kdflow_rate:8.0f}  bare {bare_rate:8.0f}  ratio {kdflow_rate / bare_rate:.2f}")
    print(f"  bfloat16 / float32: kdflow {inference['bfloat16'][0] / inference['float32'][0]:.2f}x")
    print(f"3. distillation, {DISTILL_STEPS} steps, float32, mlflow run wall time:")
    print(f"  teacher_signal=cached        {cached_wall:8.1f} s  ({cached_run.data.metrics['train_images_per_second']:.0f} images/s training)")
    print(f"  teacher_signal=online        {online_wall:8.1f} s  ({online_run.data.metrics['train_images_per_second']:.0f} images/s training)")
    print(f"  speed-up cached / online     {online_wall / cached_wall:8.2f}x  (target >= 5)")
    if arguments.reproduction_store:
        minutes = reproduction_minutes(arguments.reproduction_store)
        print("4. main reproduction (mlflow run . --env-manager local -P precision=...), measured, sweep wall time:")
        for precision, value in sorted(minutes.items()):
            print(f"  {precision:12s} {value:6.1f} min")
        if {"float32", "bfloat16"} <= minutes.keys():
            print(f"  float32 / bfloat16: {minutes['float32'] / minutes['bfloat16']:.2f}x (goal >= 1.6)")


if __name__ == "__main__":
    main()
