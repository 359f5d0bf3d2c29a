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
# Training presets. "kdtf" is the original; "tuned" starts the student at zero instead of kdtf's
# N(0, 1), which saturates its softmax. They differ in the student only, so teachers are shared.
RECIPES = ("kdtf", "tuned")

# Which parameters each kind of run takes. The standalone student trains at T = 1, as kdtf did,
# so it has no temperature; only distillation needs a teacher and a loss weighting.
_COMMON = ("num_steps", "batch_size", "learning_rate", "eval_every", "seed", "dataset", "data_dir")
KIND_PARAMETERS = {
    "teacher": ("temperature",) + _COMMON,
    "student": ("recipe",) + _COMMON,
    "distill": ("recipe", "temperature", "teacher_temperature") + _COMMON + ("teacher", "teacher_signal", "alpha"),
}
# A sweep takes the recipe of the core kinds (not one temperature, seed or teacher: it spans them).
SWEEP_RECIPE_PARAMETERS = tuple(name for name in KIND_PARAMETERS["distill"] if name not in ("temperature", "seed", "teacher"))


@dataclass(frozen=True)
class Config:
    recipe: str = "kdtf"  # training preset: "kdtf" (the original) or "tuned" (the student starts at zero)
    temperature: float = 5.0  # softmax temperature T: the teacher trains at T, soft targets use T (kdtf: 2 or 5)
    teacher_temperature: float | None = None  # T the teacher trained at; empty: the distillation's T (kdtf)
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
        if self.teacher_temperature == self.temperature:
            # The same run as kdtf's default, so it must have the same parameters and be reused.
            object.__setattr__(self, "teacher_temperature", None)
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for name in ("temperature", "teacher_temperature"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
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

    def setup(self) -> str:
        """What every kind of run shares; results are compared in one table only within a setup."""
        return (
            f"{self.dataset} steps={self.num_steps} batch={self.batch_size} "
            f"lr={self.learning_rate:g} eval_every={self.eval_every}"
        )

    def teacher_config(self) -> "Config":
        """The configuration of the teacher a distillation learns from (kdtf: the same T)."""
        temperature = self.temperature if self.teacher_temperature is None else self.teacher_temperature
        return dataclasses.replace(self, temperature=temperature)

    def params(self, kind: str) -> dict[str, str]:
        """The parameters a run of this kind logs, as canonical strings (lookups compare them)."""
        values = {name: getattr(self, name) for name in KIND_PARAMETERS[kind]}
        return {name: "" if value is None else str(value) for name, value in values.items()}


DEFAULTS = Config()


def _convert(name: str, text: str, value_type):
    """Turn one command-line string into ``value_type``, naming the parameter when it cannot."""
    try:
        return value_type(text)
    except ValueError:
        raise ValueError(f"{name} must be a {value_type.__name__}, got {text!r}") from None


def _parse_value(name: str, text: str):
    default = getattr(DEFAULTS, name)
    if default is None:  # alpha and teacher_temperature: empty means "as kdtf".
        return None if text.strip() == "" else _convert(name, text, float)
    return _convert(name, text, type(default))


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


@dataclass(frozen=True)
class SweepConfig:
    temperatures: tuple[float, ...] = (2.0, 5.0)  # one teacher and one distillation per T (kdtf: 2, 5)
    seeds: tuple[int, ...] = (12, 13, 14)  # every trial is repeated per seed; the table shows the spread
    kinds: tuple[str, ...] = KINDS  # which kinds of trial to run: teacher, student, distill
    address: str = ""  # Ray cluster: empty starts a local one; "auto" or "host:port" joins one
    cpus_per_trial: float = 1.0  # CPUs Ray reserves per trial; TensorFlow uses as many threads
    gpus_per_trial: float = 0.0  # GPUs per trial; fractions share a card (memory growth is on)
    resume: bool = False  # continue the newest interrupted sweep with these parameters

    def __post_init__(self):
        if not self.temperatures or not all(math.isfinite(t) and t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be finite numbers > 0, got {self.temperatures}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        unknown = set(self.kinds) - set(KINDS)
        if not self.kinds or unknown:
            raise ValueError(f"kinds must be some of {', '.join(KINDS)}, got {', '.join(self.kinds) or 'none'}")
        if not self.cpus_per_trial > 0:
            raise ValueError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if not self.gpus_per_trial >= 0:
            raise ValueError(f"gpus_per_trial must be >= 0, got {self.gpus_per_trial}")


SWEEP_DEFAULTS = SweepConfig()


def _parse_list(name: str, text: str, item_type):
    return tuple(_convert(name, item.strip(), item_type) for item in text.split(",") if item.strip())


def parse_sweep_args(argv: list[str]) -> tuple[SweepConfig, dict[str, str]]:
    """The sweep's own options and, as strings, the recipe options every trial shares."""
    parser = argparse.ArgumentParser(prog="sweep", description="Sweep kdflow trials over a Ray cluster.")
    for item in dataclasses.fields(SweepConfig):
        default = getattr(SWEEP_DEFAULTS, item.name)
        parser.add_argument(f"--{item.name}", default=",".join(map(str, default)) if isinstance(default, tuple) else str(default))
    for name in SWEEP_RECIPE_PARAMETERS:
        default = getattr(DEFAULTS, name)
        parser.add_argument(f"--{name}", default="" if default is None else str(default))
    arguments = vars(parser.parse_args(argv))
    if arguments["resume"].lower() not in ("true", "false"):
        raise ValueError(f"resume must be true or false, got {arguments['resume']!r}")
    sweep = SweepConfig(
        temperatures=_parse_list("temperatures", arguments.pop("temperatures"), float),
        seeds=_parse_list("seeds", arguments.pop("seeds"), int),
        kinds=_parse_list("kinds", arguments.pop("kinds"), str),
        address=arguments.pop("address"),
        cpus_per_trial=_convert("cpus_per_trial", arguments.pop("cpus_per_trial"), float),
        gpus_per_trial=_convert("gpus_per_trial", arguments.pop("gpus_per_trial"), float),
        resume=arguments.pop("resume").lower() == "true",
    )
    make_config(arguments)  # Check the shared recipe now, before any cluster is started.
    return sweep, arguments

