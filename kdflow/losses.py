"""The losses of kdtf, and the weighted form of Keras' Distiller and torchdistill's KDLoss; each
distillation loss is chosen by name from ``variants.LOSSES``.

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

