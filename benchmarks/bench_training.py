"""Training speed of the core entry points, as ratios against baselines run in this same script.

Command (about 10 minutes on 2 cores, no GPU), from the project root in the README's environment:

    python benchmarks/bench_training.py

1. Teacher training throughput: the ``teacher`` entry point (``mlflow run``, its logged
   ``train_images_per_second``, which leaves out evaluation) against a bare ``tf.function`` loop
   of the same model, batch and optimiser. Target: ratio >= 0.9. The bare loop runs before and
   after the entry point and the two are averaged, since the machine is shared and noisy.
2. Distillation wall time at equal steps (the recipe's 5000): ``teacher_signal=cached`` against
   ``online`` (the teacher runs on every batch, as kdtf did). Target: cached >= 5x faster.

Runs go to a throw-away SQLite store in a temporary folder; the data comes from the usual cache.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
TEACHER_STEPS = 600
DISTILL_STEPS = 5000


def bare_teacher_images_per_second(splits, steps: int, batch_size: int = 128) -> float:
    """The teacher's train step in a plain tf.function loop, timed from the first call like kdflow's."""
    import keras
    import tensorflow as tf

    from kdflow import losses, models

    keras.utils.set_random_seed(12)
    teacher = models.build_teacher()
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


def main() -> None:
    from kdflow import data

    splits = data.load_dataset("mnist")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"

        bare_before = bare_teacher_images_per_second(splits, TEACHER_STEPS)
        teacher_run, teacher_wall = mlflow_run(folder, "teacher", num_steps=TEACHER_STEPS)
        bare_after = bare_teacher_images_per_second(splits, TEACHER_STEPS)
        bare = (bare_before + bare_after) / 2
        entry_point = teacher_run.data.metrics["train_images_per_second"]

        cached_run, cached_wall = mlflow_run(folder, "distill", num_steps=DISTILL_STEPS, teacher="models:/kd-teacher/1")
        online_run, online_wall = mlflow_run(
            folder, "distill", num_steps=DISTILL_STEPS, teacher="models:/kd-teacher/1", teacher_signal="online"
        )

    print(f"command: python benchmarks/bench_training.py  ({os.cpu_count()} cores)")
    print(f"teacher training, {TEACHER_STEPS} steps of 128 images:")
    print(f"  bare tf.function loop        {bare:8.0f} images/s  (before {bare_before:.0f}, after {bare_after:.0f})")
    print(f"  teacher entry point          {entry_point:8.0f} images/s  (evaluation left out)")
    print(f"  ratio entry point / bare     {entry_point / bare:8.2f}  (target >= 0.90)")
    print(f"  teacher mlflow run wall time {teacher_wall:8.1f} s")
    print(f"distillation, {DISTILL_STEPS} steps, mlflow run wall time:")
    print(f"  teacher_signal=cached        {cached_wall:8.1f} s  ({cached_run.data.metrics['train_images_per_second']:.0f} images/s training)")
    print(f"  teacher_signal=online        {online_wall:8.1f} s  ({online_run.data.metrics['train_images_per_second']:.0f} images/s training)")
    print(f"  speed-up cached / online     {online_wall / cached_wall:8.2f}x  (target >= 5)")


if __name__ == "__main__":
    main()
