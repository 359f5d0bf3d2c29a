"""Every variant kdflow chooses by name, in one registry: networks (teachers and students),
distillation losses, weight initialisers, recipes and datasets.

An entry carries everything the rest of kdflow needs from it: how to build or compute it, a
one-line description for model cards and run descriptions, and, for a student network, its
initialiser in each recipe and the published numbers its tables are compared with; for a dataset,
its digests and where its files come from (``kdflow.data.DATASETS``, beside the readers its
sources use, and the same dictionary as ``DATASETS`` here). Nothing else
lists variants: the parameters' checks, run names, results tables, aliases and cards all read
these dictionaries, so adding a variant is adding one entry here (or ``register``-ing one from a
module named in ``KDFLOW_VARIANTS``, which every process of a run and a sweep imports).

Nothing here imports TensorFlow before a network is built or a loss computed, so a bad
parameter is refused in a fraction of a second.
"""

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from kdflow.data import DATASETS, Dataset, Source  # noqa: F401 (Dataset and Source: a dataset to register)

# Modules that register variants of their own (comma-separated), imported at the end of this one.
PLUGINS_VARIABLE = "KDFLOW_VARIANTS"
TEACHER, STUDENT = "teacher", "student"
# The rows of every results table, and the row labels published numbers are given for.
TEACHER_ROW, DISTILLATION_ROW, STUDENT_ROW = "Teacher", "Distillation", "Student only"


def _lazy(module: str, name: str) -> Callable:
    """``kdflow.<module>.<name>``, imported when first called: TensorFlow stays out of parameter checks."""

    def call(*args, **kwargs):
        # An import statement, not importlib: a loss runs inside a tf.function, and AutoGraph, which
        # converts every Python function called there, warns on importlib's frozen code.
        from kdflow import losses, models

        return getattr({"losses": losses, "models": models}[module], name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


@dataclass(frozen=True)
class Reference:
    """Published test accuracies a results table is compared with."""
    source: str  # who published them, as the table's column headers say it
    accuracy: dict  # (row label, temperature) -> test accuracy in percent
    errors: bool = False  # the source counted test errors: the table gives errors beside percentages


@dataclass(frozen=True)
class Network:
    role: str  # TEACHER or STUDENT
    build: Callable  # build(Initializer, precision) -> keras.Model from (N, 28, 28) images to float32 logits
    description: str  # one line for model cards: its layers and weights
    recipe_initializers: dict = field(default_factory=dict)  # a student's initialiser in each recipe
    reference: Reference | None = None  # a student's published numbers, if any


@dataclass(frozen=True)
class Loss:
    # function(labels, student_logits, teacher_logits, temperature, **parameters) -> mean loss
    function: Callable
    description: str  # one line, formatted with the run's parameters (str.format(**vars(config)))
    # The parameters it takes besides the temperature, each with its default (None: the user must
    # give it); every other loss's parameters must stay empty.
    parameters: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Initializer:
    kernel: dict  # a Keras initializer as keras.initializers.get takes it
    bias: dict
    description: str
    # Every unit starts alike: right for a convex model, wrong for a ReLU network, whose units then
    # all get the same gradient and never tell apart; a teacher may not start so.
    symmetric: bool = False


def _keras_initializer(class_name: str, **config) -> dict:
    return {"class_name": class_name, "config": config}


INITIALIZERS = {
    "normal": Initializer(_keras_initializer("RandomNormal", stddev=1.0), _keras_initializer("RandomNormal", stddev=1.0),
                          "kdtf's N(0, 1) for every weight and bias"),
    "zeros": Initializer(_keras_initializer("Zeros"), _keras_initializer("Zeros"), "every weight zero", symmetric=True),
    "he": Initializer(_keras_initializer("HeNormal"), _keras_initializer("Zeros"),
                      "He et al.'s (2015) normal weights for ReLU layers, zero biases"),
}
RECIPES = {
    # N(0, 1) for every weight saturates the softmax, and on the MLP's ReLU units makes logits in
    # the thousands; kdtf never had an MLP, so this is its rule carried over.
    "kdtf": "the original: every weight starts from N(0, 1)",
    # Softmax regression is convex, so zero is a fine start; ReLU layers start from He's normal.
    "tuned": "the student starts as its network trains best: softmax regression at zero, ReLU layers from He's normal",
}
_KDTF_ACCURACY = {
    # The kdtf README's numbers. The student trains at T = 1, but kdtf shows its single number under
    # both temperature columns, so it is listed under both here too.
    (TEACHER_ROW, 2.0): 97.9, (TEACHER_ROW, 5.0): 98.12, (DISTILLATION_ROW, 2.0): 89.14,
    (DISTILLATION_ROW, 5.0): 90.77, (STUDENT_ROW, 2.0): 88.84, (STUDENT_ROW, 5.0): 88.84,
}
HINTON_TEST_IMAGES = 10_000
_HINTON_ERRORS = {
    # Hinton et al. (2015), section 3, MNIST test errors: the big net (two hidden layers of 1200
    # units, dropout, jittered images) trained normally (T = 1), the 800-800 net distilled from it
    # at T = 20 (kdflow's row of a teacher trained at T = 1), and the 800-800 net alone.
    (TEACHER_ROW, 1.0): 67, (f"{DISTILLATION_ROW} (teacher_temperature=1)", 20.0): 74,
    (STUDENT_ROW, 1.0): 146, (STUDENT_ROW, 20.0): 146,
}
NETWORKS = {
    "cnn": Network(
        TEACHER, _lazy("models", "build_cnn"),
        "kdtf's CNN: conv 5x5x32, max-pool 2, conv 5x5x64, max-pool 2, dense 1024 ReLU, dropout 0.25, dense 10 "
        "(3,274,634 weights)",
    ),
    "softmax": Network(
        STUDENT, _lazy("models", "build_softmax"),
        "softmax regression: one dense layer from the 784 pixels to 10 logits (7,850 weights)",
        {"kdtf": "normal", "tuned": "zeros"}, Reference("kdtf", _KDTF_ACCURACY),
    ),
    "mlp": Network(
        STUDENT, _lazy("models", "build_mlp"),
        "an MLP of two hidden layers of 800 ReLU units, 784-800-800-10, no regularisation (1,276,810 weights)",
        {"kdtf": "normal", "tuned": "he"},
        Reference("Hinton et al.", {key: 100.0 - 100.0 * errors / HINTON_TEST_IMAGES for key, errors in _HINTON_ERRORS.items()},
                  errors=True),
    ),
}
LOSSES = {
    "kdtf": Loss(
        _lazy("losses", "kdtf_loss"),
        "kdtf's: CE(hard labels) + T² · CE(soft targets at T={temperature:g}), both weighted 1",
    ),
    "weighted": Loss(
        _lazy("losses", "weighted_loss"),
        "weighted: {hard_label_weight:g} · CE(hard labels) + (1 - {hard_label_weight:g}) · T² · KL(soft targets "
        "at T={temperature:g} || student at T={temperature:g}), as Keras' Distiller and torchdistill's KDLoss",
        {"hard_label_weight": None},
    ),
    "dkd": Loss(
        _lazy("losses", "dkd_loss"),
        "DKD (Zhao et al., 2022): CE(hard labels) + T² · ({dkd_target_weight:g} · KL of the target class's "
        "probability + {dkd_non_target_weight:g} · KL over the other classes), soft targets at T={temperature:g}",
        {"dkd_target_weight": 1.0, "dkd_non_target_weight": 8.0},
    ),
    "dist": Loss(
        _lazy("losses", "dist_loss"),
        "DIST (Huang et al., 2022): CE(hard labels) + T² · ({dist_inter_weight:g} · (1 - Pearson correlation of "
        "each image's class probabilities) + {dist_intra_weight:g} · (1 - Pearson correlation of each class's "
        "probabilities over the batch)), at T={temperature:g}",
        {"dist_inter_weight": 1.0, "dist_intra_weight": 1.0},
    ),
}
# Every registry by the name of the parameter that chooses from it.
CHOSEN_BY = {"teacher_model": NETWORKS, "student_model": NETWORKS, "teacher_initializer": INITIALIZERS,
             "recipe": RECIPES, "loss": LOSSES, "dataset": DATASETS}


def build_network(name: str, initializer: str, precision: str):
    """The registered network ``name``, its weights started as ``initializer`` says, in ``precision``."""
    return NETWORKS[name].build(INITIALIZERS[initializer], precision)


def networks(role: str) -> list[str]:
    return [name for name, network in NETWORKS.items() if network.role == role]


def loss_parameters() -> set[str]:
    """The parameters some loss takes: each must be empty for the losses that do not."""
    return {name for loss in LOSSES.values() for name in loss.parameters}


def register(registry: dict, name: str, entry) -> None:
    """Add a variant, checked as the built-in ones are; a name is never replaced."""
    if name in registry:
        raise ValueError(f"a variant named {name!r} is registered already")
    if isinstance(entry, Network) and entry.role == STUDENT and set(entry.recipe_initializers) != set(RECIPES):
        raise ValueError(f"student network {name!r} must name its initialiser in each recipe: {', '.join(RECIPES)}")
    registry[name] = entry


for _plugin in filter(None, os.environ.get(PLUGINS_VARIABLE, "").split(",")):
    importlib.import_module(_plugin.strip())
