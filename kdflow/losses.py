"""The losses of kdtf, and the weighted form used by Keras and torchdistill.

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


def distillation_loss(labels, student_logits, teacher_logits, temperature, alpha=None):
    """kdtf's loss when alpha is None, else alpha * T^2 * KL + (1 - alpha) * CE.

    kdtf: CE(hard labels, student_logits) + T^2 * CE(soft targets, student_logits / T).
    KL and the soft cross-entropy differ only by the teacher's entropy, a constant for the
    student, so both forms push the student the same way; they differ in the hard/soft balance.
    """
    targets = soft_targets(teacher_logits, temperature)
    hard = hard_loss(labels, student_logits)
    scaled_student_logits = student_logits / temperature
    if alpha is None:
        soft = tf.reduce_mean(
            tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=scaled_student_logits)
        )
        return hard + temperature**2 * soft
    log_student = tf.nn.log_softmax(scaled_student_logits)
    log_targets = tf.math.log(tf.maximum(targets, 1e-30))
    kl = tf.reduce_mean(tf.reduce_sum(targets * (log_targets - log_student), axis=-1))
    return alpha * temperature**2 * kl + (1.0 - alpha) * hard
