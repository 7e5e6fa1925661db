"""Recipes: one TOML file per experiment with sections [model], [data], [train], [evolution].

Defaults live in the dataclasses below (one comment per field); a recipe overrides them and
``--set section.key=value`` overrides the recipe. Unknown sections or keys, values of the wrong type and
values outside the ranges of :data:`ALLOWED` are one-line :class:`ConfigError`s, raised when the recipe is
read, before any work starts. The resolved recipe is written as ``config.json`` beside every run.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

__all__ = ["Recipe", "ModelSection", "DataSection", "TrainSection", "EvolutionSection", "Allowed", "ALLOWED",
           "check_recipe", "check_section", "load_recipe", "recipe_from_dict", "parse_override"]


@dataclass
class ModelSection:
    name: str = "smallnet"  # a registered architecture (`gee-deploy models`)
    genes: int = 32  # g; 0 builds the dense twin
    timesteps: int = 4  # T
    init: str = "kaiming"  # genetic layers' initialisation: kaiming (scale = Kaiming std / g, E clipped to +-3) |
    # paper (eq. 1 literally, scale = 1, E and G ~ N(0, 1) unclipped: Table IV's Random); see docs/evolution.md
    args: dict = field(default_factory=dict)  # further keyword arguments of the architecture


@dataclass
class DataSection:
    name: str = "fashion-mnist-mini"  # dataset (`gee_deploy.data.list_datasets()`)
    data_dir: str = ""  # local copy; "" = $GEE_DATA_DIR or the dataset's default place
    batch_size: int = 128  # per process
    workers: int = 0  # DataLoader worker processes (0 = load in the training process)
    train_limit: int = 0  # use only the first N training images (0 = all)
    test_limit: int = 0  # evaluate on the first N test images (0 = all)
    augment: bool = True  # random crop + flip on the training split
    crop_padding: int = -1  # the random crop's zero padding when augmenting; -1 = the dataset's own (2 for
    # Fashion-MNIST, 4 for CIFAR), 0 = flip only


@dataclass
class TrainSection:
    epochs: int = 10  # passes over the training split
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-3  # peak learning rate (cosine decay to 0 after warm-up)
    warmup_epochs: float = 0.0  # linear warm-up length, may be fractional
    genetic_lr_scale: float = 10.0  # lr multiplier for encodings and G: W is a product of three O(1) factors,
    # so the same Adam step moves W about 4x less (relatively) than a dense Kaiming weight; this evens it out
    weight_decay: float = 0.0  # decoupled weight decay (adamw) or L2 (sgd)
    momentum: float = 0.9  # sgd only
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    grad_clip: float = 0.0  # max gradient norm (0 = off)
    seed: int = 0  # seeds init, shuffling and augmentation (per epoch: seed * 1000 + epoch)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16/fp16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # NHWC memory format on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model
    threads: int = 0  # torch CPU threads (0 = torch's default)


@dataclass
class EvolutionSection:
    enabled: bool = False  # evolve {beta1, beta2, G} before training (Algorithm 1); false = Random
    generations: int = 5  # T_g
    population: int = 0  # lambda; 0 = the cma package's default
    fitness: str = "loss"  # loss | loss+r1 | loss+r2 | ste (eq. 16 literally) | loss+r1-scaled | loss+r2-scaled |
    # ste-scaled (scale-free terms); "loss" ranks like trained accuracy best (benchmarks/fitness_fidelity.py)
    lambda1: float = -0.5  # decay of the r1 weight, exp(lambda1 t) (eq. 16)
    lambda2: float = -0.5  # decay of the r2 weight, exp(lambda2 t) (eq. 16)
    sigma0: float = 0.3  # initial CMA-ES step size
    beta1: float = 1.0  # initial mean of beta1 (std of the encodings, eq. 9)
    beta2: float = 3.0  # initial mean of beta2 (clip bound, eq. 9)
    eval_steps: int = 20  # training steps per candidate before its loss L is measured
    eval_batches: int = 4  # held-out batches L and r1 are measured on
    diagonal_above: int = 2000  # separable CMA (CMA_diagonal) above this many dimensions
    workers: int = 1  # processes evaluating candidates in parallel
    eval_threads: int = 1  # torch CPU threads per evaluating process (results match across worker counts at equal values)


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    evolution: EvolutionSection = field(default_factory=EvolutionSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_kwargs(self) -> dict:
        """Keyword arguments for :func:`gee_deploy.zoo.create_model`."""
        return {"genes": self.model.genes or None, "timesteps": self.model.timesteps, "init": self.model.init,
                **self.model.args}


@dataclass(frozen=True)
class Allowed:
    """The values a recipe key accepts: a closed or open interval of finite numbers, or a list of choices.

    ``zero`` also admits 0 when it lies outside the interval (keys where 0 means "off" or "the default").
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False  # high itself excluded
    zero: bool = False
    choices: tuple[str, ...] = ()

    def admits(self, value) -> bool:
        if self.choices:
            return value in self.choices
        if self.zero and value == 0:
            return True
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self, integer: bool) -> str:
        """The range in words, e.g. "an integer >= 1", "a finite number in (0, 1]", "0 or an integer >= 2"."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        kind = "an integer" if integer else "a finite number"
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            text = f"{kind} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {low}"
        elif self.high is not None:
            text = f"{kind} {'<' if self.high_open else '<='} {high}"
        else:
            text = kind
        return f"0 or {text}" if self.zero else text


def _number(value: float | None) -> str:
    """A bound as a reader types it: 1048576, 0.5, 1e+06 (not 1.04858e+06)."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


# Every numeric key (and the keys with a fixed set of values) of the sections above, section.key -> Allowed.
# Bounds come from what the code downstream can use: a batch holds >= 1 image, seeds feed numpy's
# SeedSequence (non-negative, and seed * 1000 + epoch must stay within torch's 64-bit seed), eq. 16's weights
# exp(lambda t) must fade (lambda <= 0, which also keeps exp from overflowing), and beta1 / beta2 / sigma0
# are log-space CMA-ES quantities that exp() must map back to finite numbers.
ALLOWED: dict[str, Allowed] = {
    "model.genes": Allowed(low=0, high=4096),
    "model.timesteps": Allowed(low=1, high=1024),
    "model.init": Allowed(choices=("kaiming", "paper")),
    "data.batch_size": Allowed(low=1, high=1 << 20),
    "data.workers": Allowed(low=0, high=256),
    "data.train_limit": Allowed(low=0),
    "data.test_limit": Allowed(low=0),
    "data.crop_padding": Allowed(low=-1, high=64),
    "train.epochs": Allowed(low=0, high=100_000),
    "train.optimizer": Allowed(choices=("adamw", "sgd")),
    "train.lr": Allowed(low=0, high=100, low_open=True),
    "train.warmup_epochs": Allowed(low=0, high=100_000),
    "train.genetic_lr_scale": Allowed(low=0, high=1e6, low_open=True),
    "train.weight_decay": Allowed(low=0, high=100),
    "train.momentum": Allowed(low=0, high=1, high_open=True),
    "train.label_smoothing": Allowed(low=0, high=1, high_open=True),
    "train.grad_clip": Allowed(low=0, high=1e12),
    "train.seed": Allowed(low=0, high=2**32 - 1),
    "train.threads": Allowed(low=0, high=4096),
    "evolution.generations": Allowed(low=1, high=100_000),
    "evolution.population": Allowed(low=2, high=100_000, zero=True),
    "evolution.lambda1": Allowed(low=-1e6, high=0),
    "evolution.lambda2": Allowed(low=-1e6, high=0),
    "evolution.sigma0": Allowed(low=0, high=10, low_open=True),
    "evolution.beta1": Allowed(low=0, high=1e6, low_open=True),
    "evolution.beta2": Allowed(low=0, high=1e6, low_open=True),
    "evolution.eval_steps": Allowed(low=0, high=1_000_000),
    "evolution.eval_batches": Allowed(low=1, high=1_000_000),
    "evolution.diagonal_above": Allowed(low=0),
    "evolution.workers": Allowed(low=1, high=4096),
    "evolution.eval_threads": Allowed(low=1, high=4096),
}


def check_section(section: str, values) -> None:
    """Raise a one-line ConfigError naming the first key of ``values`` (the recipe's ``[section]``) outside its
    :data:`ALLOWED` range, and the range."""
    for name, allowed in ALLOWED.items():
        if name.split(".")[0] != section:
            continue
        value = getattr(values, name.split(".")[1])
        if not allowed.admits(value):
            integer = isinstance(value, int) and not isinstance(value, bool)
            raise ConfigError(f"{name} must be {allowed.describe(integer)}, got {value!r}")


def check_recipe(recipe: Recipe) -> None:
    """:func:`check_section` for every section of ``recipe``."""
    for section in dataclasses.fields(recipe):
        check_section(section.name, getattr(recipe, section.name))


def _coerce(section: str, key: str, value, annotation):
    """Check ``value`` against a field's annotation; ints widen to floats, nothing else converts."""
    name = f"{section}.{key}"
    target = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict}.get(
        annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""), None)
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if target is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if target is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if target is not None and not isinstance(value, target):
        raise ConfigError(f"{name} must be a {target.__name__}, got {value!r}")
    return value


def recipe_from_dict(data: dict) -> Recipe:
    recipe = Recipe()
    for section, values in data.items():
        if not hasattr(recipe, section):
            raise ConfigError(f"unknown recipe section [{section}]; known: model, data, train, evolution")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        obj = getattr(recipe, section)
        fields = {f.name: f for f in dataclasses.fields(obj)}
        for key, value in values.items():
            if key not in fields:
                if section == "model":  # architecture arguments go through to create_model, which checks them
                    obj.args[key] = value
                    continue
                raise ConfigError(f"unknown key {section}.{key}; known: {', '.join(fields)}")
            setattr(obj, key, _coerce(section, key, value, fields[key].type))
    check_recipe(recipe)
    return recipe


def parse_override(text: str) -> tuple[str, str, object]:
    """``section.key=value`` -> (section, key, value); value parsed as a TOML literal, else a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    path, raw = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def load_recipe(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read a recipe file (None = defaults) and apply ``--set`` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe {p} not found")
        try:
            data = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"recipe {p} is not valid TOML: {e}") from None
    for text in overrides:
        section, key, value = parse_override(text)
        data.setdefault(section, {})[key] = value
    return recipe_from_dict(data)


