"""The training batches' pipeline: kdflow's (two batches prefetched, tf.data's autotuning off)
against the autotuned one kdflow had before, side by side in this same script.

Command (about 12 minutes on 2 cores, no GPU), from the project root in the README's environment:

    python benchmarks/bench_pipeline.py

Trials of the reproduction sat up to a minute between their last evaluation and their test
evaluation with nothing to do. Their stacks showed where: the training loop's function returning,
and freeing its batch iterator, which waits in tf.data for a thread of the autotuned pipeline
(``UnboundedThreadPool``), while Ray Tune's thread and the driver waited for the trial.

This runs ``kdflow.training.train`` on the teacher (the CNN, on real MNIST, in the precision
``auto`` picks here, on one TensorFlow thread) as two trials at once, as the reproduction's two
slots do, in rounds: the autotuned pipeline in both, then kdflow's. For each trial it prints:

- after the last evaluation: the seconds from the last evaluation to ``train`` returning (building
  the float32 twin, the test evaluation, and freeing the pipeline). Goal: kdflow's at most 3 s.
- its training steps per second. Goal: kdflow's median at least 0.95x the autotuned one's.
"""

import dataclasses
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = 3000  # about 2 minutes a trial here; the reproduction's teachers train 5000
ROUNDS = 2  # rounds per pipeline, two trials each


def autotuned_batches(arrays: tuple, batch_size: int, seed: int):
    """The pipeline as kdflow built it until tf.data's autotuning was turned off: the baseline."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(arrays).shuffle(len(arrays[0]), seed=seed, reshuffle_each_iteration=True)
    return dataset.repeat().batch(batch_size).prefetch(tf.data.AUTOTUNE)


def trial(pipeline: str, seed: int) -> tuple[float, float]:
    """Train the teacher as a one-CPU trial does; return (seconds after its last evaluation, steps per second)."""
    from kdflow import data, losses, precision, quiet, training, variants
    from kdflow.config import DEFAULTS

    quiet.silence_libraries()
    quiet.import_tensorflow()
    training.configure_devices(1)
    if pipeline == "autotuned":
        training.training_batches = autotuned_batches
    config = dataclasses.replace(DEFAULTS, num_steps=STEPS, seed=seed, precision=precision.resolve("auto"))
    splits = data.load_dataset()
    last_evaluation = []

    def on_evaluation(evaluation):
        if evaluation.step == config.num_steps:
            last_evaluation.append(time.perf_counter())

    def objective(model, images, labels):
        return losses.hard_loss(labels, model(images, training=True), config.temperature)

    def build_teacher(chosen: str):
        return variants.build_network(config.teacher_model, config.teacher_initializer, chosen)

    _, result = training.train(build_teacher, objective, (splits.train_images, splits.train_labels), splits, config,
                               config.temperature, on_evaluation)
    return time.perf_counter() - last_evaluation[0], STEPS / result.train_seconds


def main() -> None:
    from kdflow import precision

    flags = sorted(precision.cpu_flags() & precision.BF16_CPU_FLAGS)
    print(f"command: python benchmarks/bench_pipeline.py\nmachine: {os.cpu_count()} cores, native bf16: "
          f"{', '.join(flags) or 'none'}; the teacher at {STEPS} steps in {precision.resolve('auto')}, two trials at once, "
          "one TensorFlow thread each", flush=True)
    measured = {"autotuned": [], "kdflow": []}
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow per trial, as a trial's worker has
    with context.Pool(2, maxtasksperchild=1) as pool:
        for round_number in range(ROUNDS):
            for pipeline in measured:
                seeds = (12 + 2 * round_number, 13 + 2 * round_number)
                for seed, (after, speed) in zip(seeds, pool.starmap(trial, [(pipeline, seed) for seed in seeds])):
                    measured[pipeline].append((after, speed))
                    print(f"{pipeline} seed {seed}: {after:.1f} s after the last evaluation, {speed:.1f} steps/s", flush=True)
    speeds = {pipeline: statistics.median(speed for _, speed in values) for pipeline, values in measured.items()}
    afters = {pipeline: [after for after, _ in values] for pipeline, values in measured.items()}
    print(f"after the last evaluation: kdflow's at most {max(afters['kdflow']):.1f} s (goal <= 3 s), the autotuned "
          f"pipeline's up to {max(afters['autotuned']):.1f} s (median {statistics.median(afters['autotuned']):.1f} s)")
    print(f"training speed: kdflow/autotuned {speeds['kdflow'] / speeds['autotuned']:.2f}x (goal >= 0.95; "
          f"medians {speeds['kdflow']:.1f} and {speeds['autotuned']:.1f} steps/s)")


if __name__ == "__main__":
    main()
