"""Every hyperparameter in one place: its name, its default (the original kdtf recipe) and its check.

The MLproject parameters map onto these fields one to one (tests/test_config.py holds them to it),
and the entry points build their command lines from here, so a new knob is added in exactly one spot.
"""

import argparse
import dataclasses
import math
from dataclasses import dataclass

from kdflow.data import DATASETS

KINDS = ("teacher", "student", "distill")
TEACHER_SIGNALS = ("cached", "online")

# Which parameters each kind of run takes. The standalone student trains at T = 1, as kdtf did,
# so it has no temperature; only distillation needs a teacher and a loss weighting.
_COMMON = ("num_steps", "batch_size", "learning_rate", "eval_every", "seed", "dataset", "data_dir")
KIND_PARAMETERS = {
    "teacher": ("temperature",) + _COMMON,
    "student": _COMMON,
    "distill": ("temperature",) + _COMMON + ("teacher", "teacher_signal", "alpha"),
}


@dataclass(frozen=True)
class Config:
    temperature: float = 5.0  # softmax temperature T: the teacher trains at T, soft targets use T (kdtf: 2 or 5)
    num_steps: int = 5000  # optimiser steps of batch_size examples (kdtf: 5000)
    batch_size: int = 128  # examples per step (kdtf: 128)
    learning_rate: float = 0.001  # Adam learning rate (kdtf: 0.001)
    eval_every: int = 100  # steps between validation evaluations; the best one is kept (kdtf: 100)
    seed: int = 12  # seeds initialisation, shuffling and dropout (kdtf: 12, env SEED)
    dataset: str = "mnist"  # "mnist" or "fashion_mnist"
    data_dir: str = ""  # a directory or file holding the dataset; empty: cache, then download
    teacher: str = ""  # teacher model URI (models:/...); empty: reuse or train a matching teacher
    teacher_signal: str = "cached"  # "cached": stored teacher logits; "online": run the teacher per batch (kdtf)
    alpha: float | None = None  # None: kdtf loss CE + T^2*CE_soft; else alpha*T^2*KL + (1-alpha)*CE

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")
        for name in ("num_steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.teacher_signal not in TEACHER_SIGNALS:
            raise ValueError(
                f"teacher_signal must be one of {', '.join(TEACHER_SIGNALS)}, got {self.teacher_signal!r}"
            )
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be empty (kdtf loss) or between 0 and 1, got {self.alpha}")

    def recipe(self) -> str:
        """Name the training recipe: runs are compared in one results table only within a recipe."""
        return (
            f"{self.dataset} steps={self.num_steps} batch={self.batch_size} "
            f"lr={self.learning_rate:g} eval_every={self.eval_every}"
        )

    def params(self, kind: str) -> dict[str, str]:
        """The parameters a run of this kind logs, as canonical strings (lookups compare them)."""
        values = {name: getattr(self, name) for name in KIND_PARAMETERS[kind]}
        return {name: "" if value is None else str(value) for name, value in values.items()}


DEFAULTS = Config()


def _parse_value(name: str, text: str):
    """Turn one command-line string into the field's type, naming the parameter when it cannot."""
    default = getattr(DEFAULTS, name)
    try:
        if name == "alpha":
            return None if text.strip() == "" else float(text)
        return type(default)(text)
    except ValueError:
        raise ValueError(f"{name} must be a {type(default).__name__}, got {text!r}") from None


def parse_args(kind: str, argv: list[str]) -> dict[str, str]:
    """Read ``--name value`` options for a kind of run; values stay strings until ``make_config``."""
    parser = argparse.ArgumentParser(prog=kind, description=f"Train a kdflow {kind}.")
    for name in KIND_PARAMETERS[kind]:
        default = getattr(DEFAULTS, name)
        parser.add_argument(f"--{name}", default="" if default is None else str(default))
    return vars(parser.parse_args(argv))


def make_config(values: dict[str, str]) -> Config:
    """Build a validated Config from parameter strings; raises ValueError naming a bad parameter."""
    known = {item.name for item in dataclasses.fields(Config)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown parameters: {', '.join(sorted(unknown))}")
    return Config(**{name: _parse_value(name, text) for name, text in values.items()})
