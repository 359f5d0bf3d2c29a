"""The losses against a reference written from the formulas with SciPy, T^2 factor included."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import softmax

from kdflow import losses

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 10, size=16)
STUDENT_LOGITS = RNG.normal(scale=3.0, size=(16, 10)).astype(np.float32)
TEACHER_LOGITS = RNG.normal(scale=8.0, size=(16, 10)).astype(np.float32)


def cross_entropy(targets, logits):
    return float(np.mean(-(targets * np.log(softmax(logits, axis=1))).sum(axis=1)))


def one_hot(labels):
    return np.eye(10)[labels]


def test_hard_loss_is_cross_entropy_at_temperature():
    for temperature in (1.0, 2.0, 5.0):
        expected = cross_entropy(one_hot(LABELS), STUDENT_LOGITS / temperature)
        assert float(losses.hard_loss(LABELS, STUDENT_LOGITS, temperature)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0, 20.0])
def test_kdtf_loss_matches_reference_with_t_squared(temperature):
    soft = softmax(TEACHER_LOGITS / temperature, axis=1)
    expected = cross_entropy(one_hot(LABELS), STUDENT_LOGITS) + temperature**2 * cross_entropy(
        soft, STUDENT_LOGITS / temperature
    )
    actual = float(losses.kdtf_loss(LABELS, STUDENT_LOGITS, TEACHER_LOGITS, temperature))
    assert actual == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("hard_label_weight", [0.0, 0.5, 0.9, 1.0])
def test_weighted_loss_matches_reference(hard_label_weight):
    """Keras' Distiller: w * CE + (1 - w) * T^2 * KL, w being its student_loss_weight."""
    temperature = 4.0
    soft = softmax(TEACHER_LOGITS / temperature, axis=1)
    student = softmax(STUDENT_LOGITS / temperature, axis=1)
    kl = float(np.mean((soft * (np.log(soft) - np.log(student))).sum(axis=1)))
    expected = hard_label_weight * cross_entropy(one_hot(LABELS), STUDENT_LOGITS) + (1 - hard_label_weight) * temperature**2 * kl
    actual = float(losses.weighted_loss(LABELS, STUDENT_LOGITS, TEACHER_LOGITS, temperature, hard_label_weight))
    assert actual == pytest.approx(expected, rel=1e-4)


def test_hard_label_weight_one_is_the_student_alone():
    hard_only = losses.weighted_loss(LABELS, STUDENT_LOGITS, TEACHER_LOGITS, 4.0, 1.0)
    assert float(hard_only) == pytest.approx(float(losses.hard_loss(LABELS, STUDENT_LOGITS)), rel=1e-6)


def test_soft_term_gradient_is_independent_of_t_scale():
    # Hinton et al.: soft-target gradients scale as 1/T^2, which the T^2 factor cancels. For large T
    # the gradient of T^2 * CE_soft tends to (student - teacher) / N for zero-mean logits.
    student = tf.constant(STUDENT_LOGITS - STUDENT_LOGITS.mean(axis=1, keepdims=True), tf.float64)
    teacher = tf.constant(TEACHER_LOGITS - TEACHER_LOGITS.mean(axis=1, keepdims=True), tf.float64)
    temperature = 1000.0
    with tf.GradientTape() as tape:
        tape.watch(student)
        soft_only = losses.kdtf_loss(LABELS, student, teacher, temperature) - losses.hard_loss(LABELS, student)
    gradient = tape.gradient(soft_only, student).numpy()
    expected = (student.numpy() - teacher.numpy()) / 10.0 / len(LABELS)
    np.testing.assert_allclose(gradient, expected, rtol=0.05, atol=2e-4)
