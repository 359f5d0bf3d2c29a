"""The training loop shared by the teacher, the student and distillation.

kdtf's loop, in TensorFlow 2: Adam on shuffled batches for a fixed number of steps, an evaluation
on the validation split every ``eval_every`` steps, and the weights of the best evaluation restored
before the single test score. The objective is passed in, so one loop serves all three kinds.

A network trains in the run's number format, but what leaves the loop is the same network built
in float32 with the trained weights: the test score, the logged model and a teacher's stored
logits are all computed in float32. bfloat16 keeps 8 bits of mantissa, so two of kdtf's teacher
logits in the thousands can tie in one batch and not in another, and a score or soft target
computed in it depends on which images share its batch. In float32 a logit differs between batch
compositions by float32 rounding at most (about one part in 10^6), so the stored logits, the
teacher run again, and a loaded model all give what the run recorded. The validation evaluations
that pick the best step run in the training format, as part of training.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from kdflow.losses import hard_loss

PREDICT_BATCH_SIZE = 1000


@dataclass(frozen=True)
class Evaluation:
    step: int
    train_loss: float  # mean objective over the steps since the previous evaluation
    validation_loss: float
    validation_accuracy: float


@dataclass(frozen=True)
class TrainingResult:
    best_step: int
    best_validation_accuracy: float
    test_accuracy: float
    test_log_loss: float  # mean cross-entropy of the labels under the model's probabilities at T = 1
    test_digits: np.ndarray  # the digit the stored model answers for each test image
    # Training throughput with evaluation time left out, so it compares with a bare loop.
    train_images_per_second: float
    # Where the run's time went, for the performance record: optimiser steps, and evaluation on
    # the validation and test images (logging the results is tracking, counted in neither).
    train_seconds: float
    evaluation_seconds: float


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and ask TensorFlow for deterministic kernels.

    On the CPU this makes the same parameters and seed give identical metrics, run after run.
    Call it right before a model is built: Keras draws default initialiser seeds from Python's
    ``random``, which MLflow draws from too (for run names), e.g. while a teacher run is created.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def configure_devices(cpu_threads: int | None = None) -> None:
    """Fit TensorFlow to the resources a trial reserved; call before TensorFlow runs any op.

    TensorFlow sizes its thread pools to every core of the machine whatever Ray reserved, and on a
    GPU it takes all the memory; memory growth lets trials with fractional GPUs share a card.
    """
    if cpu_threads:
        tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
        tf.config.threading.set_inter_op_parallelism_threads(cpu_threads)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


def training_batches(arrays: tuple, batch_size: int, seed: int) -> tf.data.Dataset:
    """Endless shuffled batches, reshuffled every epoch like the TF1 tutorial's next_batch."""
    dataset = tf.data.Dataset.from_tensor_slices(arrays)
    dataset = dataset.shuffle(len(arrays[0]), seed=seed, reshuffle_each_iteration=True)
    # A fixed prefetch, with tf.data's autotuning off: its optimiser thread sleeps up to a minute at a
    # time and freeing the iterator waited for it, which held trials up to 60 s after their last
    # evaluation; on in-memory arrays it tunes nothing worth that (benchmarks/bench_pipeline.py).
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.repeat().batch(batch_size).prefetch(2).with_options(options)


def predict_logits(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The model's logits for many images, in inference mode (dropout off)."""
    # predict_on_batch compiles once per model and reuses it: faster than eager calls, lighter
    # than model.predict's progress and callback machinery.
    chunks = range(0, len(images), PREDICT_BATCH_SIZE)
    return np.concatenate([model.predict_on_batch(images[start : start + PREDICT_BATCH_SIZE]) for start in chunks])


def evaluate(model, images, labels, temperature=1.0) -> tuple[float, float, np.ndarray]:
    """Loss (cross-entropy at the model's training temperature), accuracy and the predicted digits
    on labelled images."""
    logits = predict_logits(model, images)
    loss = float(hard_loss(tf.constant(labels), tf.constant(logits), temperature))
    digits = np.argmax(logits, axis=1)
    return loss, float(np.mean(digits == labels)), digits


def train(
    build_model: Callable[[str], keras.Model],
    objective: Callable,
    arrays: tuple,
    splits,
    config,
    validation_temperature: float = 1.0,
    on_evaluation: Callable[[Evaluation], None] = lambda evaluation: None,
) -> tuple[keras.Model, TrainingResult]:
    """Seed, build the network in ``config.precision``, minimise ``objective(model, *batch)`` over
    its weights, and return the float32 network with the best weights and its result.

    ``build_model(precision)`` builds a fresh network. ``arrays`` are the training tensors that the
    batches are drawn from, and ``objective`` computes the loss of one batch of them; it calls the
    model with ``training=True`` so dropout is on. ``splits`` is a :class:`kdflow.data.Splits` and
    ``config`` a :class:`kdflow.config.Config` (seed, num_steps, eval_every, learning_rate,
    batch_size, precision).
    """
    make_deterministic(config.seed)
    model = build_model(config.precision)
    batches = training_batches(arrays, config.batch_size, config.seed)
    optimizer = keras.optimizers.Adam(config.learning_rate)
    if config.precision == "float16":
        # float16's narrow exponent turns small gradients into zeros: scale the loss up before
        # differentiating, and the gradients down before the update (bfloat16 has float32's range).
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    variables = model.trainable_variables
    optimizer.build(variables)

    # Keras' steps_per_execution idea: all the steps between two evaluations run inside one
    # tf.function, so Python is not on the per-step path.
    @tf.function
    def train_steps(iterator, count):
        losses = tf.TensorArray(tf.float32, size=count)
        for index in tf.range(count):
            with tf.GradientTape() as tape:
                loss = objective(model, *next(iterator))
                scaled_loss = optimizer.scale_loss(loss)  # The loss itself unless loss scaling is on.
            optimizer.apply_gradients(zip(tape.gradient(scaled_loss, variables), variables))
            losses = losses.write(index, loss)
        return tf.reduce_mean(losses.stack())

    iterator = iter(batches)
    best = None  # (validation accuracy, step, weights)
    training_seconds = evaluation_seconds = 0.0
    evaluation_steps = list(range(config.eval_every, config.num_steps, config.eval_every)) + [config.num_steps]
    previous_step = 0
    for step in evaluation_steps:
        started = time.perf_counter()
        train_loss = float(train_steps(iterator, tf.constant(step - previous_step)))
        training_seconds += time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise ValueError(
                f"the training loss is {train_loss} by step {step}: training diverged; learning_rate "
                f"({config.learning_rate:g}) or, for a teacher or a distillation, temperature "
                f"({config.temperature:g}) is likely too large"
            )
        previous_step = step
        started = time.perf_counter()
        validation_loss, validation_accuracy, _ = evaluate(
            model, splits.validation_images, splits.validation_labels, validation_temperature
        )
        evaluation_seconds += time.perf_counter() - started
        on_evaluation(Evaluation(step, train_loss, validation_loss, validation_accuracy))
        if best is None or validation_accuracy > best[0]:
            best = (validation_accuracy, step, model.get_weights())

    best_validation_accuracy, best_step, best_weights = best
    # A float32 network is its own float32 twin, so float32 runs compute exactly what they always did.
    stored_model = model if config.precision == "float32" else build_model("float32")
    stored_model.set_weights(best_weights)
    started = time.perf_counter()
    test_log_loss, test_accuracy, test_digits = evaluate(stored_model, splits.test_images, splits.test_labels)
    evaluation_seconds += time.perf_counter() - started
    return stored_model, TrainingResult(
        best_step=best_step,
        best_validation_accuracy=best_validation_accuracy,
        test_accuracy=test_accuracy,
        test_log_loss=test_log_loss,
        test_digits=test_digits,
        train_images_per_second=config.num_steps * config.batch_size / training_seconds,
        train_seconds=training_seconds,
        evaluation_seconds=evaluation_seconds,
    )
