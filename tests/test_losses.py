"""The losses against a reference written from the formulas with NumPy and SciPy, T^2 factor included."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import softmax
from scipy.stats import pearsonr

from kdflow import losses, variants

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


def dkd_reference(labels, student_logits, teacher_logits, temperature, target_weight, non_target_weight):
    """Zhao et al.'s DKD from the definitions: binary KL on [p_t, 1 - p_t], and KL over the nine
    other classes after deleting the target and renormalising."""
    student = softmax(np.asarray(student_logits, np.float64) / temperature, axis=1)
    teacher = softmax(np.asarray(teacher_logits, np.float64) / temperature, axis=1)
    target_terms, non_target_terms = [], []
    for label, student_row, teacher_row in zip(labels, student, teacher):
        binary_student = np.array([student_row[label], 1 - student_row[label]])
        binary_teacher = np.array([teacher_row[label], 1 - teacher_row[label]])
        target_terms.append(np.sum(binary_teacher * np.log(binary_teacher / binary_student)))
        rest_student, rest_teacher = np.delete(student_row, label), np.delete(teacher_row, label)
        rest_student, rest_teacher = rest_student / rest_student.sum(), rest_teacher / rest_teacher.sum()
        non_target_terms.append(np.sum(rest_teacher * np.log(rest_teacher / rest_student)))
    distillation = target_weight * np.mean(target_terms) + non_target_weight * np.mean(non_target_terms)
    return cross_entropy(one_hot(labels), np.asarray(student_logits, np.float64)) + temperature**2 * distillation


def dist_reference(labels, student_logits, teacher_logits, temperature, inter_weight, intra_weight):
    """Huang et al.'s DIST from the definitions, with SciPy's Pearson correlation per image and per class."""
    student = softmax(np.asarray(student_logits, np.float64) / temperature, axis=1)
    teacher = softmax(np.asarray(teacher_logits, np.float64) / temperature, axis=1)
    inter = 1 - np.mean([pearsonr(s, t).statistic for s, t in zip(student, teacher)])
    intra = 1 - np.mean([pearsonr(s, t).statistic for s, t in zip(student.T, teacher.T)])
    return (cross_entropy(one_hot(labels), np.asarray(student_logits, np.float64))
            + temperature**2 * (inter_weight * inter + intra_weight * intra))


@pytest.mark.parametrize("temperature, target_weight, non_target_weight", [(4.0, 1.0, 8.0), (1.0, 1.0, 8.0),
                                                                           (2.0, 0.5, 0.0), (20.0, 0.0, 2.0)])
def test_dkd_loss_matches_reference(temperature, target_weight, non_target_weight):
    expected = dkd_reference(LABELS, STUDENT_LOGITS, TEACHER_LOGITS, temperature, target_weight, non_target_weight)
    actual = float(losses.dkd_loss(LABELS, STUDENT_LOGITS, TEACHER_LOGITS, temperature, target_weight, non_target_weight))
    assert actual == pytest.approx(expected, rel=1e-4)


def test_dkd_decomposes_classical_kd():
    """The paper's identity, per image: KL(teacher || student) = TCKD + (1 - p_t of the teacher) * NCKD.
    So DKD with alpha = 1 and beta = 1 - p_t, less its hard term, is the classical KD term."""
    temperature = 4.0
    teacher_target = softmax(TEACHER_LOGITS / temperature, axis=1)[np.arange(16), LABELS]
    for index in range(4):
        one = slice(index, index + 1)
        dkd = float(losses.dkd_loss(LABELS[one], STUDENT_LOGITS[one], TEACHER_LOGITS[one], temperature,
                                    1.0, float(1 - teacher_target[index])))
        kd = float(losses.weighted_loss(LABELS[one], STUDENT_LOGITS[one], TEACHER_LOGITS[one], temperature, 0.0))
        assert dkd - float(losses.hard_loss(LABELS[one], STUDENT_LOGITS[one])) == pytest.approx(kd, rel=1e-4)


def test_dkd_stays_finite_when_the_teacher_is_certain():
    """p_t = 1 in float32 makes log(1 - p_t) = -inf on the naive path; the loss and its gradient stay finite."""
    teacher = np.zeros((16, 10), np.float32)
    teacher[np.arange(16), LABELS] = 200.0
    student = tf.constant(STUDENT_LOGITS * 30)
    with tf.GradientTape() as tape:
        tape.watch(student)
        loss = losses.dkd_loss(LABELS, student, teacher, 1.0, 1.0, 8.0)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(tape.gradient(loss, student).numpy()))


@pytest.mark.parametrize("temperature, inter_weight, intra_weight", [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0), (2.0, 2.0, 0.0),
                                                                     (1.0, 0.0, 0.5)])
def test_dist_loss_matches_reference(temperature, inter_weight, intra_weight):
    expected = dist_reference(LABELS, STUDENT_LOGITS, TEACHER_LOGITS, temperature, inter_weight, intra_weight)
    actual = float(losses.dist_loss(LABELS, STUDENT_LOGITS, TEACHER_LOGITS, temperature, inter_weight, intra_weight))
    assert actual == pytest.approx(expected, rel=1e-4)


def test_dist_of_a_student_that_matches_the_teacher_is_the_hard_term_alone():
    same = float(losses.dist_loss(LABELS, TEACHER_LOGITS, TEACHER_LOGITS, 4.0, 1.0, 1.0))
    assert same == pytest.approx(float(losses.hard_loss(LABELS, TEACHER_LOGITS)), abs=1e-5)


@pytest.mark.parametrize("loss_name", ["dkd", "dist"])
def test_new_losses_on_a_bfloat16_network_match_the_reference_and_train(loss_name):
    """The student network computes in bfloat16 and answers float32 logits; the loss of those logits
    is the reference's, and its gradient reaches every weight."""
    from kdflow import variants

    student = variants.build_network("softmax", "normal", "bfloat16")
    images = RNG.random((16, 28, 28)).astype(np.float32)
    with tf.GradientTape() as tape:
        student_logits = student(images, training=True)
        parameters = {name: default for name, default in variants.LOSSES[loss_name].parameters.items()}
        loss = variants.LOSSES[loss_name].function(LABELS, student_logits, TEACHER_LOGITS, 4.0, **parameters)
    assert student_logits.dtype == tf.float32
    reference = {"dkd": dkd_reference, "dist": dist_reference}[loss_name]
    # N(0, 1) weights give logits of tens, whose float32 softmax and correlations differ from the
    # float64 reference by up to about 2e-4 of the loss (1.8e-4 failed a suite at 1e-4); a wrong
    # term would be off by far more.
    assert float(loss) == pytest.approx(reference(LABELS, student_logits.numpy(), TEACHER_LOGITS, 4.0, *parameters.values()),
                                        rel=1e-3)
    gradients = tape.gradient(loss, student.trainable_variables)
    assert all(gradient is not None and np.any(gradient.numpy() != 0) for gradient in gradients)


AUTOGRAPH_SCRIPT = """
import tensorflow as tf
from kdflow import variants

for name, loss in variants.LOSSES.items():
    parameters = {parameter: 0.5 if default is None else default for parameter, default in loss.parameters.items()}

    @tf.function
    def objective(labels, student_logits, teacher_logits):
        return loss.function(labels, student_logits, teacher_logits, 4.0, **parameters)

    print(name, float(objective(tf.constant([1, 2]), tf.ones((2, 10)), tf.zeros((2, 10)))))
"""


def test_every_registered_loss_runs_in_a_tf_function_without_autograph_warnings(tmp_path):
    """Training calls a loss through its registry entry inside a tf.function. AutoGraph converts every
    Python function that call reaches, and warns in every trial's output about any it cannot read.
    A fresh process, since AutoGraph warns once per function and process; a file, since AutoGraph
    converts only functions whose source it can read."""
    script = tmp_path / "objective.py"
    script.write_text(AUTOGRAPH_SCRIPT)
    process = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    assert [line.split()[0] for line in process.stdout.splitlines()] == list(variants.LOSSES)
    assert "AutoGraph could not transform" not in process.stdout + process.stderr
