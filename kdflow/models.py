"""The two networks of kdtf: a CNN teacher ("big model") and a softmax-regression student.

Both take (N, 28, 28) float images in [0, 1] and return logits, never probabilities: the losses
divide logits by the temperature before the softmax. Every weight and bias starts from a normal
distribution with standard deviation 1, as kdtf's ``tf.random_normal`` did; that initialisation is
why its student reaches about 89% rather than the 92% a zero-initialised one would. The "tuned"
recipe starts the student at zero: softmax regression is convex, so zero is a fine start, and it
keeps the first logits small instead of saturating the softmax.
"""

import keras
from keras import layers

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)


def _normal():
    # Keras draws from the global seed set by keras.utils.set_random_seed, so runs repeat exactly.
    # Each weight gets an initialiser of its own: one drawn seed shared by two would correlate them.
    return keras.initializers.RandomNormal(stddev=1.0)


# How a network's weights start, by name; a recipe (config.RECIPES) names its student's.
INITIALIZERS = {"normal": _normal, "zeros": keras.initializers.Zeros}


def _dense(units, activation=None, initializer="normal"):
    make = INITIALIZERS[initializer]
    return layers.Dense(units, activation=activation, kernel_initializer=make(), bias_initializer=make())


def _conv(filters):
    return layers.Conv2D(
        filters, 5, padding="same", activation="relu", kernel_initializer=_normal(), bias_initializer=_normal()
    )


def build_teacher() -> keras.Model:
    """conv5x5x32 - pool2 - conv5x5x64 - pool2 - dense1024 - dropout(keep 0.75) - dense10."""
    return keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE, name="images"),
            layers.Reshape(IMAGE_SHAPE + (1,)),
            _conv(32),
            layers.MaxPooling2D(2),
            _conv(64),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            _dense(1024, activation="relu"),
            layers.Dropout(0.25),
            _dense(NUM_CLASSES),
        ],
        name="teacher",
    )


def build_student(initializer: str = "normal") -> keras.Model:
    """Softmax regression: one dense layer from 784 pixels to 10 logits, started by ``initializer``."""
    return keras.Sequential(
        [keras.Input(IMAGE_SHAPE, name="images"), layers.Flatten(), _dense(NUM_CLASSES, initializer=initializer)],
        name="student",
    )
