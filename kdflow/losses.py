"""The losses of kdtf, the weighted form of Keras' Distiller and torchdistill's KDLoss, DKD and
DIST; each distillation loss is chosen by name from ``variants.LOSSES``.

``labels`` are integer class ids; every ``*_logits`` tensor is (batch, 10) and unscaled. Soft
targets are ``softmax(teacher_logits / T)``. Hinton et al. note that soft-target gradients scale
as 1 / T^2, so the soft term is multiplied by T^2 to keep its weight independent of T.
"""

import tensorflow as tf


def hard_loss(labels, logits, temperature=1.0):
    """Mean cross-entropy of softmax(logits / T) against the hard labels."""
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits / temperature)
    )


def soft_targets(teacher_logits, temperature):
    return tf.nn.softmax(teacher_logits / temperature)


def kdtf_loss(labels, student_logits, teacher_logits, temperature):
    """kdtf's loss: CE(hard labels, student_logits) + T^2 * CE(soft targets, student_logits / T).

    It has no weight: both terms count fully.
    """
    soft = tf.reduce_mean(
        tf.nn.softmax_cross_entropy_with_logits(
            labels=soft_targets(teacher_logits, temperature), logits=student_logits / temperature
        )
    )
    return hard_loss(labels, student_logits) + temperature**2 * soft


def weighted_loss(labels, student_logits, teacher_logits, temperature, hard_label_weight):
    """w * CE(hard labels) + (1 - w) * T^2 * KL(soft targets || softmax(student_logits / T)).

    ``w`` is Keras' ``Distiller(student_loss_weight=w)`` and torchdistill's ``KDLoss(alpha=w)``.
    KL and kdtf's soft cross-entropy differ only by the teacher's entropy, a constant for the
    student, so both forms push the student the same way; they differ in the hard/soft balance.
    """
    targets = soft_targets(teacher_logits, temperature)
    log_student = tf.nn.log_softmax(student_logits / temperature)
    log_targets = tf.math.log(tf.maximum(targets, 1e-30))
    kl = tf.reduce_mean(tf.reduce_sum(targets * (log_targets - log_student), axis=-1))
    return hard_label_weight * hard_loss(labels, student_logits) + (1.0 - hard_label_weight) * temperature**2 * kl



def _non_target_log_mass(log_probabilities, target_mask):
    """log(1 - p_target) per example, from the log-probabilities of the other classes: stable where
    the target's probability is near 1, which ``log1p(-p_target)`` is not."""
    return tf.reduce_logsumexp(log_probabilities - 1e9 * target_mask, axis=-1)


def dkd_loss(labels, student_logits, teacher_logits, temperature, dkd_target_weight, dkd_non_target_weight):
    """Decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022):

        CE(hard labels) + T^2 * (alpha * TCKD + beta * NCKD)

    with p = softmax(logits / T), t the target class and alpha, beta ``dkd_target_weight`` and
    ``dkd_non_target_weight``. TCKD = KL([p_t, 1 - p_t] of the teacher || the same of the student)
    is the target-class term: how sure of the right class to be. NCKD = KL(teacher || student) over
    the other nine classes, each renormalised to sum to 1: how the wrong classes rank. Classical KD
    is TCKD + (1 - p_t of the teacher) * NCKD, which ties NCKD's weight to the teacher's doubt; DKD
    gives each its own. The paper's recipe (mdistiller) adds the cross-entropy at weight 1, as
    here, and ramps DKD in over its first 20 epochs, which kdflow's step-based training leaves out.
    """
    student_logits = tf.convert_to_tensor(student_logits)
    target_mask = tf.one_hot(labels, tf.shape(student_logits)[-1], dtype=student_logits.dtype)
    log_student = tf.nn.log_softmax(student_logits / temperature)
    log_teacher = tf.nn.log_softmax(teacher_logits / temperature)
    # Binary distributions [p_t, 1 - p_t], in logs.
    target_student = tf.reduce_sum(target_mask * log_student, axis=-1)
    target_teacher = tf.reduce_sum(target_mask * log_teacher, axis=-1)
    rest_student = _non_target_log_mass(log_student, target_mask)
    rest_teacher = _non_target_log_mass(log_teacher, target_mask)
    target_kd = (tf.exp(target_teacher) * (target_teacher - target_student)
                 + tf.exp(rest_teacher) * (rest_teacher - rest_student))
    # The non-target classes renormalised: log p_i - log(1 - p_t). The target's entry is pushed to
    # -1e9 so that its probability is 0 (unmasked it could overflow exp where p_t is near 1).
    renormalised_student = log_student - rest_student[:, None] - 1e9 * target_mask
    renormalised_teacher = log_teacher - rest_teacher[:, None] - 1e9 * target_mask
    non_target_kd = tf.reduce_sum(tf.exp(renormalised_teacher) * (renormalised_teacher - renormalised_student), axis=-1)
    distillation = dkd_target_weight * tf.reduce_mean(target_kd) + dkd_non_target_weight * tf.reduce_mean(non_target_kd)
    return hard_loss(labels, student_logits) + temperature**2 * distillation


def _pearson_rows(first, second, epsilon=1e-8):
    """Pearson's correlation of each row of ``first`` with the same row of ``second``."""
    first = first - tf.reduce_mean(first, axis=-1, keepdims=True)
    second = second - tf.reduce_mean(second, axis=-1, keepdims=True)
    return tf.reduce_sum(first * second, axis=-1) / (tf.norm(first, axis=-1) * tf.norm(second, axis=-1) + epsilon)


def dist_loss(labels, student_logits, teacher_logits, temperature, dist_inter_weight, dist_intra_weight):
    """DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022):

        CE(hard labels) + T^2 * (beta * (1 - mean_i rho(p_s[i, :], p_t[i, :]))
                                 + gamma * (1 - mean_c rho(p_s[:, c], p_t[:, c])))

    with p = softmax(logits / T) over a batch, rho Pearson's correlation, beta ``dist_inter_weight``
    and gamma ``dist_intra_weight``. The inter-class term matches how each image ranks the classes,
    the intra-class term how each class ranks the images of the batch; neither asks the student to
    match the teacher's probabilities exactly, which the paper argues a weaker student cannot. The
    paper's loss defaults to T = 1, beta = gamma = 1, beside the cross-entropy at weight 1.
    """
    student = tf.nn.softmax(student_logits / temperature)
    teacher = tf.nn.softmax(teacher_logits / temperature)
    inter_class = 1.0 - tf.reduce_mean(_pearson_rows(student, teacher))
    intra_class = 1.0 - tf.reduce_mean(_pearson_rows(tf.transpose(student), tf.transpose(teacher)))
    distillation = dist_inter_weight * inter_class + dist_intra_weight * intra_class
    return hard_loss(labels, student_logits) + temperature**2 * distillation
