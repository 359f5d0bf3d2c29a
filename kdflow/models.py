"""The networks: kdtf's CNN teacher ("big model") and softmax-regression student, and Hinton et
al.'s (2015) small MNIST net, an MLP student that has the capacity to learn from a teacher.

All take (N, 28, 28) float images in [0, 1] and return logits, never probabilities: the losses
divide logits by the temperature before the softmax. kdtf started every weight and bias from a
normal distribution with standard deviation 1 (``tf.random_normal``); that initialisation is why
its student reaches about 89% rather than the 92% a zero-initialised one would, and why its
teacher stops near 98%. The "tuned" recipe starts softmax regression at zero (it is convex, so
zero is a fine start) and ReLU networks from He et al.'s normal distribution with zero biases.

Each layer computes in the run's number format (``kdflow.precision``); in a narrow format a last
float32 layer hands the logits on in float32, so the softmax and the losses never run in 16 bits.
The policy is given to each layer rather than set globally: a sweep's warm worker clears Keras'
global state between trials, and a float32 network stays exactly what it was without one.
"""

import keras
from keras import layers

from kdflow.data import NUM_CLASSES
from kdflow.precision import POLICIES

IMAGE_SHAPE = (28, 28)


def _initializer(initializer, part: str):
    # A fresh Keras initialiser per weight: Keras draws each from the global seed set by
    # keras.utils.set_random_seed, so runs repeat exactly, and one drawn seed shared by two weights
    # would correlate them.
    return keras.initializers.get(getattr(initializer, part))


MLP_HIDDEN_UNITS = (800, 800)  # Hinton et al.'s small MNIST net: 146 test errors alone, 74 distilled


def _dense(units, policy, initializer, activation=None):
    return layers.Dense(units, activation=activation, kernel_initializer=_initializer(initializer, "kernel"),
                        bias_initializer=_initializer(initializer, "bias"), dtype=policy)


def _conv(filters, policy, initializer):
    return layers.Conv2D(filters, 5, padding="same", activation="relu", kernel_initializer=_initializer(initializer, "kernel"),
                         bias_initializer=_initializer(initializer, "bias"), dtype=policy)


def _network(name: str, policy: str, hidden: list) -> keras.Model:
    """Images in, float32 logits out, ``hidden`` computing under the dtype ``policy``."""
    float32_logits = [] if policy == "float32" else [layers.Activation("linear", dtype="float32")]
    return keras.Sequential([keras.Input(IMAGE_SHAPE, name="images")] + hidden + float32_logits, name=name)


def build_cnn(initializer, precision: str = "float32") -> keras.Model:
    """kdtf's teacher: conv5x5x32 - pool2 - conv5x5x64 - pool2 - dense1024 - dropout(keep 0.75) - dense10."""
    policy = POLICIES[precision]
    return _network("teacher", policy, [
        layers.Reshape(IMAGE_SHAPE + (1,), dtype=policy),
        _conv(32, policy, initializer),
        layers.MaxPooling2D(2, dtype=policy),
        _conv(64, policy, initializer),
        layers.MaxPooling2D(2, dtype=policy),
        layers.Flatten(dtype=policy),
        _dense(1024, policy, initializer, activation="relu"),
        layers.Dropout(0.25, dtype=policy),
        _dense(NUM_CLASSES, policy, initializer),
    ])


def build_softmax(initializer, precision: str = "float32") -> keras.Model:
    """kdtf's student: one dense layer from 784 pixels to 10 logits."""
    policy = POLICIES[precision]
    return _network("student", policy, [layers.Flatten(dtype=policy), _dense(NUM_CLASSES, policy, initializer)])


def build_mlp(initializer, precision: str = "float32") -> keras.Model:
    """Hinton et al.'s small net: 784-800-800-10 with ReLU and no regularisation."""
    policy = POLICIES[precision]
    hidden = [_dense(units, policy, initializer, activation="relu") for units in MLP_HIDDEN_UNITS]
    return _network("student", policy, [layers.Flatten(dtype=policy)] + hidden + [_dense(NUM_CLASSES, policy, initializer)])

