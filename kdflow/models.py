"""The two networks of kdtf: a CNN teacher ("big model") and a softmax-regression student.

Both take (N, 28, 28) float images in [0, 1] and return logits, never probabilities: the losses
divide logits by the temperature before the softmax. Every weight and bias starts from a normal
distribution with standard deviation 1, as kdtf's ``tf.random_normal`` did; that initialisation is
why its student reaches about 89% rather than the 92% a zero-initialised one would. The "tuned"
recipe starts the student at zero: softmax regression is convex, so zero is a fine start, and it
keeps the first logits small instead of saturating the softmax.

Each layer computes in the run's number format (``kdflow.precision``); in a narrow format a last
float32 layer hands the logits on in float32, so the softmax and the losses never run in 16 bits.
The policy is given to each layer rather than set globally: a sweep's warm worker clears Keras'
global state between trials, and a float32 network stays exactly what it was without one.
"""

import keras
from keras import layers

from kdflow.precision import POLICIES

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)


def _normal():
    # Keras draws from the global seed set by keras.utils.set_random_seed, so runs repeat exactly.
    # Each weight gets an initialiser of its own: one drawn seed shared by two would correlate them.
    return keras.initializers.RandomNormal(stddev=1.0)


# How a network's weights start, by name; a recipe (config.RECIPES) names its student's.
INITIALIZERS = {"normal": _normal, "zeros": keras.initializers.Zeros}


def _dense(units, policy, activation=None, initializer="normal"):
    make = INITIALIZERS[initializer]
    return layers.Dense(units, activation=activation, kernel_initializer=make(), bias_initializer=make(), dtype=policy)


def _conv(filters, policy):
    return layers.Conv2D(
        filters, 5, padding="same", activation="relu", kernel_initializer=_normal(), bias_initializer=_normal(),
        dtype=policy,
    )


def _network(name: str, precision: str, hidden: list) -> keras.Model:
    """Images in, float32 logits out, ``hidden`` computing in ``precision``."""
    float32_logits = [] if POLICIES[precision] == "float32" else [layers.Activation("linear", dtype="float32")]
    return keras.Sequential([keras.Input(IMAGE_SHAPE, name="images")] + hidden + float32_logits, name=name)


def build_teacher(precision: str = "float32") -> keras.Model:
    """conv5x5x32 - pool2 - conv5x5x64 - pool2 - dense1024 - dropout(keep 0.75) - dense10."""
    policy = POLICIES[precision]
    return _network("teacher", precision, [
        layers.Reshape(IMAGE_SHAPE + (1,), dtype=policy),
        _conv(32, policy),
        layers.MaxPooling2D(2, dtype=policy),
        _conv(64, policy),
        layers.MaxPooling2D(2, dtype=policy),
        layers.Flatten(dtype=policy),
        _dense(1024, policy, activation="relu"),
        layers.Dropout(0.25, dtype=policy),
        _dense(NUM_CLASSES, policy),
    ])


def build_student(initializer: str = "normal", precision: str = "float32") -> keras.Model:
    """Softmax regression: one dense layer from 784 pixels to 10 logits, started by ``initializer``."""
    policy = POLICIES[precision]
    return _network("student", precision, [layers.Flatten(dtype=policy), _dense(NUM_CLASSES, policy, initializer=initializer)])
