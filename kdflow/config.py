"""Every hyperparameter in one place: its name, its default (the original kdtf recipe) and its check.

The MLproject parameters map onto these fields one to one (tests/test_config.py holds them to it),
and the entry points build their command lines from here, so a new knob is added in exactly one spot.
Values are typed from the moment they are parsed; ``to_text`` and ``parse_value`` are the only
places where a value becomes a string (for argv, MLflow parameters and tags) or comes back from one.
"""

import argparse
import dataclasses
import math
from dataclasses import dataclass

from kdflow import precision, variants
from kdflow.data import TRAIN_SIZE

KINDS = ("teacher", "student", "distill")
TEACHER_SIGNALS = ("cached", "online")
# A batch is drawn from the training split, so it can hold at most every training image once.
MAX_BATCH_SIZE = TRAIN_SIZE
# NumPy and TensorFlow take seeds as unsigned 32-bit integers.
SEED_RANGE = range(0, 2**32)

# Which parameters each kind of run takes. The standalone student trains at T = 1, as kdtf did,
# so it has no temperature; only distillation needs a teacher and a loss weighting.
_COMMON = ("num_steps", "batch_size", "learning_rate", "eval_every", "seed", "dataset", "data_dir", "precision")
KIND_PARAMETERS = {
    "teacher": ("temperature", "teacher_model", "teacher_initializer") + _COMMON,
    "student": ("recipe", "student_model") + _COMMON,
    "distill": ("recipe", "student_model", "temperature", "teacher_temperature", "teacher_model", "teacher_initializer")
    + _COMMON + ("teacher", "teacher_signal", "loss", "hard_label_weight", "dkd_target_weight", "dkd_non_target_weight",
                 "dist_inter_weight", "dist_intra_weight"),
}
# What never tells two runs apart: where the data came from (its digest pins what), the seed (a
# table spreads over it) and the temperature (a table's columns). The rest of a run's parameters
# that differ from the defaults are what it is: its name, its results-table row and its alias.
NOT_NAMED = ("data_dir", "seed", "temperature")
# Parameters that were renamed, and what to say to someone who still uses the old name.
RENAMED = {
    "alpha": "alpha was renamed hard_label_weight, the weight of the hard-label loss (Keras' "
    "student_loss_weight, torchdistill's alpha); kdflow's old alpha weighted the soft term, so "
    "alpha=a is hard_label_weight=1-a",
}


@dataclass(frozen=True)
class Config:
    recipe: str = "kdtf"  # how the student's weights start, a name in variants.RECIPES: "kdtf" (N(0, 1)) or "tuned"
    student_model: str = "softmax"  # the student network in variants.NETWORKS: "softmax" (kdtf's) or "mlp" (784-800-800-10)
    teacher_model: str = "cnn"  # the teacher network in variants.NETWORKS: "cnn" (kdtf's)
    temperature: float = 5.0  # softmax temperature T: the teacher trains at T, soft targets use T (kdtf: 2 or 5)
    teacher_temperature: float | None = None  # T the teacher trained at; empty: the distillation's T (kdtf)
    teacher_initializer: str = "normal"  # how the teacher's weights start, in variants.INITIALIZERS: "normal" (kdtf's N(0, 1)) or "he"
    num_steps: int = 5000  # optimiser steps of batch_size examples (kdtf: 5000)
    batch_size: int = 128  # examples per step (kdtf: 128)
    learning_rate: float = 0.001  # Adam learning rate (kdtf: 0.001)
    eval_every: int = 100  # steps between validation evaluations; the best one is kept (kdtf: 100)
    seed: int = 12  # seeds initialisation, shuffling and dropout (kdtf: 12, env SEED)
    dataset: str = "mnist"  # "mnist" or "fashion_mnist"
    data_dir: str = ""  # a directory or file holding the dataset; empty: cache, then download
    teacher: str = ""  # teacher model URI (models:/...); empty: reuse or train a matching teacher
    teacher_signal: str = "cached"  # "cached": stored teacher logits; "online": run the teacher per batch (kdtf)
    loss: str = "kdtf"  # the distillation loss in variants.LOSSES: "kdtf" (CE + T^2*CE_soft), "weighted", "dkd" or "dist"
    hard_label_weight: float | None = None  # loss=weighted's w in w*CE + (1-w)*T^2*KL; empty for other losses
    dkd_target_weight: float | None = None  # loss=dkd's alpha, the target-class term's weight; empty: 1 under dkd
    dkd_non_target_weight: float | None = None  # loss=dkd's beta, the other classes' term's weight; empty: 8 under dkd
    dist_inter_weight: float | None = None  # loss=dist's beta, the per-image correlation term's weight; empty: 1 under dist
    dist_intra_weight: float | None = None  # loss=dist's gamma, the per-class correlation term's weight; empty: 1 under dist
    precision: str = "auto"  # number format: "auto" (bfloat16 where the hardware has it), float32, bfloat16, float16

    def __post_init__(self):
        if self.teacher_temperature == self.temperature:
            # The same run as kdtf's default, so it must have the same parameters and be reused.
            object.__setattr__(self, "teacher_temperature", None)
        self._check_variants()
        for name in ("temperature", "teacher_temperature"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("num_steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be at most {MAX_BATCH_SIZE} (the training split), got {self.batch_size}")
        if self.seed not in SEED_RANGE:
            raise ValueError(f"seed must be an integer from 0 to 2**32 - 1, got {self.seed}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        if self.precision not in precision.PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(precision.PRECISIONS)}, got {self.precision!r}")
        if self.teacher_signal not in TEACHER_SIGNALS:
            raise ValueError(
                f"teacher_signal must be one of {', '.join(TEACHER_SIGNALS)}, got {self.teacher_signal!r}"
            )
        if self.hard_label_weight is not None and not 0.0 <= self.hard_label_weight <= 1.0:
            raise ValueError(f"hard_label_weight must be between 0 and 1, got {self.hard_label_weight}")
        for name in ("dkd_target_weight", "dkd_non_target_weight", "dist_inter_weight", "dist_intra_weight"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    def _check_variants(self) -> None:
        """Each variant parameter names a registered entry; a loss's parameters are set for it alone."""
        roles = {"teacher_model": variants.TEACHER, "student_model": variants.STUDENT}
        for name, registry in variants.CHOSEN_BY.items():
            choices = variants.networks(roles[name]) if name in roles else list(registry)
            if name == "teacher_initializer":
                choices = [choice for choice in choices if not variants.INITIALIZERS[choice].symmetric]
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        taken = variants.LOSSES[self.loss].parameters
        for name in sorted(variants.loss_parameters()):
            if name in taken and getattr(self, name) is None:
                if taken[name] is None:
                    raise ValueError(f"loss={self.loss} needs {name}")
                # Stated, so that a run given the default and one left empty are the same run.
                object.__setattr__(self, name, taken[name])
            if name not in taken and getattr(self, name) is not None:
                takers = [loss for loss, entry in variants.LOSSES.items() if name in entry.parameters]
                raise ValueError(f"{name} is a parameter of loss={' or '.join(takers)}, not of loss={self.loss}; "
                                 f"set loss={takers[0]}, or leave {name} empty")

    def student_initializer(self) -> str:
        """How this recipe starts this student network, a name in variants.INITIALIZERS."""
        return variants.NETWORKS[self.student_model].recipe_initializers[self.recipe]

    def resolved(self) -> "Config":
        """This configuration as this machine trains it: ``auto`` replaced by the format chosen here."""
        return dataclasses.replace(self, precision=precision.resolve(self.precision))

    def teacher_config(self) -> "Config":
        """The configuration of the teacher a distillation learns from (kdtf: the same T)."""
        temperature = self.temperature if self.teacher_temperature is None else self.teacher_temperature
        return dataclasses.replace(self, temperature=temperature)

    def params(self, kind: str) -> dict[str, str]:
        """The parameters a run of this kind logs, as canonical strings (lookups compare them)."""
        return {name: to_text(getattr(self, name)) for name in KIND_PARAMETERS[kind]}

    def differences(self, names) -> dict[str, str]:
        """Those of ``names`` whose value is not the default, for names and labels: ``name=value``.

        The default ``precision`` is what ``auto`` picks on this machine, so a run in that format
        is named as kdtf's, and one in another format says which.
        """
        defaults = DEFAULTS.resolved() if self.precision != DEFAULTS.precision else DEFAULTS
        # A loss's parameter at that loss's own default is as unremarkable as any other default.
        default = vars(defaults) | variants.LOSSES[self.loss].parameters
        return {name: display(getattr(self, name)) for name in names if getattr(self, name) != default[name]}


DEFAULTS = Config()


def display(value) -> str:
    """A value as people read it in names and labels: 5 rather than 5.0."""
    return f"{value:g}" if isinstance(value, float) else to_text(value)


def to_text(value) -> str:
    """A typed value as parameter text: empty for None, comma-separated for a tuple."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(map(to_text, value))
    return str(value)


def _convert(name: str, text: str, value_type):
    """Turn one string into ``value_type``, naming the parameter when it cannot."""
    try:
        return value_type(text)
    except ValueError:
        raise ValueError(f"{name} must be a {value_type.__name__}, got {text!r}") from None


def parse_value(name: str, text: str, default):
    """Parameter text as a value of the default's type (``to_text`` read back)."""
    if default is None:  # teacher_temperature and the losses' parameters: empty means "as kdtf" or the loss's default.
        return None if text.strip() == "" else _convert(name, text, float)
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{name} must be true or false, got {text!r}")
        return text.lower() == "true"
    if isinstance(default, tuple):  # An empty default holds numbers: hard_label_weights.
        item_type = type(default[0]) if default else float
        return tuple(_convert(name, item.strip(), item_type) for item in text.split(",") if item.strip())
    return _convert(name, text, type(default))


class _Parser(argparse.ArgumentParser):
    """argparse that raises ValueError, so a bad command line is reported like a bad value."""

    def error(self, message):
        raise ValueError(message)


def parse_options(prog: str, argv: list[str], defaults: dict) -> dict:
    """Read ``--name value`` options for the named defaults and return typed values."""
    parser = _Parser(prog=prog, description=f"kdflow {prog}")
    for name, default in defaults.items():
        parser.add_argument(f"--{name}", default=to_text(default))
    for name in RENAMED:
        parser.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    arguments = vars(parser.parse_args(argv))
    for name, message in RENAMED.items():
        if arguments.pop(name) is not None:
            raise ValueError(message)
    return {name: parse_value(name, arguments[name], default) for name, default in defaults.items()}


def parse_args(kind: str, argv: list[str]) -> Config:
    """The validated Config of a kind of run from its command line; ValueError names a bad parameter."""
    return Config(**parse_options(kind, argv, {name: getattr(DEFAULTS, name) for name in KIND_PARAMETERS[kind]}))
