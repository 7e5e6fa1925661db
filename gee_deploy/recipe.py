"""Recipes: one TOML file per experiment with sections [model], [data], [train], [evolution].

The sections below are the schema, declared once: every key with its type, its range and a one-line doc
(pydantic dataclasses, strict: an integer key refuses 1.5 and true, a float key takes 3 as 3.0, no key takes
NaN or an infinity). A recipe overrides the defaults and ``--set section.key=value`` overrides the recipe.
Unknown sections or keys, values of the wrong type and values outside their ranges are one-line
:class:`ConfigError` s naming the key and its range, raised when the recipe is read (or a key assigned),
before any work starts. The CLI's options that set the same quantities check them with the same declaration
(:func:`check_value`, :func:`describe`). The resolved recipe is written as ``config.json`` beside every run.

Ranges come from what the code downstream can use: a batch holds >= 1 image, seeds feed numpy's
SeedSequence (non-negative, and seed * 1000 + epoch must stay within torch's 64-bit seed), eq. 16's weights
exp(lambda t) must fade (lambda <= 0, which also keeps exp from overflowing), and beta1 / beta2 / sigma0 are
log-space CMA-ES quantities that exp() must map back to finite numbers.

The recipes of the README ship inside the package (``gee_deploy/recipes/*.toml``, listed by
``gee-deploy recipes``); wherever a recipe file is asked for, the name of a shipped one (``demo``) works too.
A recipe may start with a top-level ``description = "..."``: one line saying what it is for, shown by
``gee-deploy recipes`` and not part of the resolved recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Literal, TypeVar, Union, cast

import annotated_types
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass, is_pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from .errors import ConfigError

__all__ = [
    "Recipe",
    "ModelSection",
    "DataSection",
    "TrainSection",
    "EvolutionSection",
    "FITNESS",
    "Optimizer",
    "GENES",
    "DEVICE",
    "SECTIONS",
    "describe",
    "bounds",
    "unwrap",
    "check_value",
    "recipe_field",
    "load_recipe",
    "recipe_from_dict",
    "parse_override",
    "shipped_recipes",
    "resolve_recipe",
    "read_recipe_file",
]

# one alias per kind of value several keys (or CLI options) share
# gee_deploy.kinds.FitnessMode's and .Init's values in their order, spelt out so that a type checker reads them
# (a Literal built from the enum at run time is no type; tests/test_recipe.py checks they match); stored as
# plain strings (checkpoints hold them)
FITNESS = Literal["loss", "loss+r1", "loss+r2", "ste", "loss+r1-scaled", "loss+r2-scaled", "ste-scaled"]
Optimizer = Literal["adamw", "sgd"]
Init = Literal["kaiming", "paper"]  # the genetic layers' initialisations
GENES = Annotated[int, Field(ge=0, le=4096)]  # g; 0 = the dense twin (plain convs, no encodings)
DEVICE = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$"), "auto, cpu, cuda or cuda:N"]
_SEED = Annotated[int, Field(ge=0, le=2**32 - 1)]
_EPOCHS = Annotated[float, Field(ge=0, le=100_000)]
_LOG_SPACE = Annotated[float, Field(gt=0, le=1e6)]
_DECAY = Annotated[float, Field(ge=-1e6, le=0)]
_COUNT = Annotated[int, Field(ge=0)]  # 0 = all / off

_STRICT = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)


def _doc(text: str):
    return Field(description=text)


@dataclass(config=_STRICT)
class _Section:
    """Base of the sections: any invalid key, at construction, ``dataclasses.replace`` or assignment, is one
    ConfigError line naming ``section.key`` and its declared range, not pydantic's multi-line report."""

    @model_validator(mode="wrap")
    @classmethod
    def _one_line(cls, values, handler):
        try:
            return handler(values)
        except ValidationError as e:
            raise _config_error(_SECTION_NAMES.get(cls, cls.__name__), cls, e.errors()[0]) from None


@dataclass(config=_STRICT)
class ModelSection(_Section):
    name: Annotated[str, _doc("a registered architecture (`gee-deploy models`)")] = "smallnet"
    genes: Annotated[GENES, _doc("g, the gene count; 0 builds the dense twin")] = 32
    timesteps: Annotated[int, Field(ge=1, le=1024, description="T, simulation steps per image")] = 4
    init: Annotated[
        Init,
        _doc(
            "genetic layers' initialisation: kaiming (scale = Kaiming std / g, E clipped to "
            "+-3) or paper (eq. 1 literally: scale = 1, E and G ~ N(0, 1) unclipped, Table IV's "
            "Random; docs/evolution.md)"
        ),
    ] = "kaiming"
    args: Annotated[
        dict, _doc("further keyword arguments of the architecture (any other key of [model] lands here)")
    ] = field(default_factory=dict)


@dataclass(config=_STRICT)
class DataSection(_Section):
    name: Annotated[str, _doc("dataset (`gee_deploy.data.list_datasets()`)")] = "fashion-mnist-mini"
    data_dir: Annotated[str, _doc('local copy; "" = $GEE_DATA_DIR or the dataset\'s default place')] = ""
    batch_size: Annotated[int, Field(ge=1, le=1 << 20, description="images per optimiser step, per process")] = 128
    workers: Annotated[
        int, Field(ge=0, le=256, description="DataLoader worker processes (0 = load in the training process)")
    ] = 0
    train_limit: Annotated[_COUNT, _doc("use only the first N training images (0 = all)")] = 0
    test_limit: Annotated[_COUNT, _doc("evaluate on the first N test images (0 = all)")] = 0
    augment: Annotated[bool, _doc("random crop + flip on the training split")] = True
    crop_padding: Annotated[
        int,
        Field(
            ge=-1,
            le=64,
            description="the random crop's zero padding; -1 = the "
            "dataset's own (2 Fashion-MNIST, 4 CIFAR), 0 = "
            "flip only",
        ),
    ] = -1


@dataclass(config=_STRICT)
class TrainSection(_Section):
    epochs: Annotated[int, Field(ge=0, le=100_000, description="passes over the training split")] = 10
    optimizer: Annotated[Optimizer, _doc("adamw or sgd (with Nesterov momentum)")] = "adamw"
    lr: Annotated[float, Field(gt=0, le=100, description="peak learning rate (cosine decay to 0 after warm-up)")] = 2e-3
    warmup_epochs: Annotated[_EPOCHS, _doc("linear warm-up length, may be fractional")] = 0.0
    genetic_lr_scale: Annotated[
        float,
        Field(
            gt=0,
            le=1e6,
            description=(
                "lr multiplier for encodings and G: W is a product of three O(1) factors, so the same Adam step moves "
                "W about 4x less (relatively) than a dense Kaiming weight; this evens it out"
            ),
        ),
    ] = 10.0
    weight_decay: Annotated[float, Field(ge=0, le=100, description="decoupled weight decay (adamw) or L2 (sgd)")] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1, description="sgd only")] = 0.9
    label_smoothing: Annotated[float, Field(ge=0, lt=1, description="cross-entropy label smoothing")] = 0.0
    grad_clip: Annotated[float, Field(ge=0, le=1e12, description="max gradient norm (0 = off)")] = 0.0
    seed: Annotated[_SEED, _doc("seeds init, shuffling and augmentation (per epoch: seed * 1000 + epoch)")] = 0
    device: Annotated[DEVICE, _doc("auto, cpu, cuda or cuda:N")] = "auto"
    amp: Annotated[bool, _doc("bf16/fp16 autocast on CUDA (ignored on CPU)")] = True
    channels_last: Annotated[bool, _doc("NHWC memory format on CUDA (ignored on CPU)")] = True
    compile: Annotated[bool, _doc("torch.compile the model")] = False
    threads: Annotated[int, Field(ge=0, le=4096, description="torch CPU threads (0 = torch's default)")] = 0


@dataclass(config=_STRICT)
class EvolutionSection(_Section):
    enabled: Annotated[bool, _doc("evolve {beta1, beta2, G} before training (Algorithm 1); false = Random")] = False
    generations: Annotated[int, Field(ge=1, le=100_000, description="T_g")] = 5
    population: Annotated[
        Annotated[int, Field(ge=0, le=0)] | Annotated[int, Field(ge=2, le=100000)],
        _doc("lambda; 0 = the cma package's default"),
    ] = 0
    fitness: Annotated[
        FITNESS,
        _doc(
            "eq. 16 literally (loss, loss+r1, loss+r2, ste) or with scale-free terms (-scaled); loss ranks like "
            "trained accuracy best (benchmarks/fitness_fidelity.py)"
        ),
    ] = "loss"
    lambda1: Annotated[_DECAY, _doc("decay of the r1 weight, exp(lambda1 t) (eq. 16)")] = -0.5
    lambda2: Annotated[_DECAY, _doc("decay of the r2 weight, exp(lambda2 t) (eq. 16)")] = -0.5
    sigma0: Annotated[float, Field(gt=0, le=10, description="initial CMA-ES step size")] = 0.3
    beta1: Annotated[_LOG_SPACE, _doc("initial mean of beta1 (std of the encodings, eq. 9)")] = 1.0
    beta2: Annotated[_LOG_SPACE, _doc("initial mean of beta2 (clip bound, eq. 9)")] = 3.0
    eval_steps: Annotated[
        int, Field(ge=0, le=1_000_000, description="training steps per candidate before its loss L is measured")
    ] = 20
    eval_batches: Annotated[int, Field(ge=1, le=1_000_000, description="held-out batches L and r1 are measured on")] = 4
    diagonal_above: Annotated[_COUNT, _doc("separable CMA (CMA_diagonal) above this many dimensions")] = 2000
    workers: Annotated[int, Field(ge=1, le=4096, description="processes evaluating candidates in parallel")] = 1
    eval_threads: Annotated[
        int,
        Field(
            ge=1,
            le=4096,
            description=(
                "torch CPU threads per evaluating process (results match across worker counts at equal values)"
            ),
        ),
    ] = 1


@dataclass(config=_STRICT)
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    evolution: EvolutionSection = field(default_factory=EvolutionSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_kwargs(self) -> dict:
        """Keyword arguments for :func:`gee_deploy.zoo.create_model`."""
        return {
            "genes": self.model.genes or None,
            "timesteps": self.model.timesteps,
            "init": self.model.init,
            **self.model.args,
        }


def _section_classes() -> dict[str, type[_Section]]:
    """Each field of :class:`Recipe` -> its section's dataclass (the field's default factory)."""
    classes: dict[str, type[_Section]] = {}
    for f in dataclasses.fields(Recipe):
        cls = f.default_factory
        assert isinstance(cls, type) and issubclass(cls, _Section), f"Recipe.{f.name} is not a section"
        classes[f.name] = cls
    return classes


SECTIONS = _section_classes()
_SECTION_NAMES = {cls: name for name, cls in SECTIONS.items()}
_S = TypeVar("_S", bound=_Section)


def _fields(cls: type[_Section]) -> dict[str, FieldInfo]:
    """A section's declared keys -> pydantic's record of each (annotation, constraints, description)."""
    assert is_pydantic_dataclass(cls), f"{cls.__name__} is not a pydantic dataclass"
    return cls.__pydantic_fields__


def _config_error(section: str, cls: type[_Section], error: ErrorDetails) -> ConfigError:
    """One pydantic error (``ValidationError.errors()[0]``) of ``[section]`` as the schema's one-line message."""
    key = str(error["loc"][0]) if error["loc"] else ""
    fields = _fields(cls)
    if error["type"] == "unexpected_keyword_argument" or key not in fields:
        return ConfigError(f"unknown key {section}.{key}; known: {', '.join(fields)}")
    return ConfigError(f"{section}.{key} must be {describe(fields[key].rebuild_annotation())}, got {error['input']!r}")


# ---- the declaration in words, and checks of single values against it -------------------------------------


def _number(value) -> str:
    """A bound as a reader types it: 1048576, 0.5, 1e+06 (not 1.04858e+06)."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def unwrap(annotation):
    """(base type, constraints) of an annotation: nested ``Annotated`` and pydantic's ``FieldInfo`` unwrapped."""
    metadata = []
    while typing.get_origin(annotation) is Annotated:
        annotation, *extra = typing.get_args(annotation)
        for item in extra:
            metadata += getattr(item, "metadata", None) or ([] if hasattr(item, "metadata") else [item])
    return annotation, metadata


def bounds(annotation) -> tuple[float | None, bool, float | None, bool]:
    """(low, low excluded, high, high excluded) of a numeric annotation; None where it has no bound."""
    low: float | None = None
    high: float | None = None
    low_open = high_open = False
    for m in unwrap(annotation)[1]:  # annotated_types types its bounds as comparison protocols: numbers here
        if isinstance(m, annotated_types.Ge):
            low = cast(float, m.ge)
        elif isinstance(m, annotated_types.Gt):
            low, low_open = cast(float, m.gt), True
        elif isinstance(m, annotated_types.Le):
            high = cast(float, m.le)
        elif isinstance(m, annotated_types.Lt):
            high, high_open = cast(float, m.lt), True
    return low, low_open, high, high_open


def describe(annotation) -> str:
    """What an annotation of this schema admits, in words: "an integer in [1, 1048576]", "a finite number in
    (0, 100]", "0 or an integer in [2, 100000]", "one of adamw, sgd", "true or false"."""
    base, metadata = unwrap(annotation)
    if typing.get_origin(base) is Union:
        return " or ".join(describe(member) for member in typing.get_args(base))
    if typing.get_origin(base) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(base)))
    if base is bool:
        return "true or false"
    if base is str:  # a constrained string says its values in words, the last item of its Annotated
        return next((m for m in reversed(metadata) if isinstance(m, str)), "a string")
    if base is dict:
        return "a table"
    low, low_open, high, high_open = bounds(annotation)
    if high is not None and high >= 2**62:  # a bound that only keeps a count inside int64: say nothing of it
        high = None
    if low is not None and low == high:
        return _number(low)
    kind = "an integer" if base is int else "a finite number"
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {_number(low)}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {_number(high)}"
    return kind


def recipe_field(key: str):
    """The declared annotation of recipe key ``section.key`` (its type, range and doc)."""
    section, name = key.split(".", 1)
    return _fields(SECTIONS[section])[name].rebuild_annotation()


def _adapter(annotation) -> TypeAdapter:
    return TypeAdapter(annotation, config=_STRICT)


def check_value(annotation, value, name: str):
    """``value`` if it fits ``annotation`` (a type of this schema, e.g. ``recipe_field("data.batch_size")``),
    else a one-line ConfigError "``name`` must be <range>, got <value>"."""
    try:
        return _adapter(annotation).validate_python(value)
    except ValidationError:
        raise ConfigError(f"{name} must be {describe(annotation)}, got {value!r}") from None


# ---- reading recipes ------------------------------------------------------------------------------------


def _section(section: str, values: object) -> _Section:
    """``values`` (a TOML table) as the dataclass of ``[section]``; one-line ConfigError for the first bad key."""
    cls = SECTIONS[section]
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table, got {values!r}")
    values = dict(values)
    if section == "model":  # architecture arguments go through to create_model, which checks them
        extra = {k: values.pop(k) for k in list(values) if k not in _fields(cls)}
        if extra:
            values["args"] = {**check_value(dict, values.get("args", {}), "model.args"), **extra}
    return cls(**values)


def recipe_from_dict(data: dict) -> Recipe:
    """A :class:`Recipe` from nested tables ({"train": {"epochs": 3}, ...}); missing keys take their defaults.

    Raises:
        ConfigError: an unknown section or key, or a value of the wrong type or out of its range (one line
            naming the key and its range).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a recipe must be a table of sections, got {data!r}")
    for section, values in data.items():
        if section not in SECTIONS:
            close = difflib.get_close_matches(section, ["description", *SECTIONS], n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            if isinstance(values, dict):
                raise ConfigError(f"unknown recipe section [{section}]; known: {', '.join(SECTIONS)}{hint}")
            raise ConfigError(
                f"unknown top-level key {section} in the recipe: its top level holds only "
                f'description = "..." and the sections [{"], [".join(SECTIONS)}]{hint}'
            )
    # read in the recipe's order, so the first bad key of the file is the one reported
    sections = {section: _section(section, values) for section, values in data.items()}
    return Recipe(
        model=_parsed(sections, ModelSection),
        data=_parsed(sections, DataSection),
        train=_parsed(sections, TrainSection),
        evolution=_parsed(sections, EvolutionSection),
    )


def _parsed(sections: dict[str, _Section], cls: type[_S]) -> _S:
    """The section of class ``cls`` among ``sections`` (as :func:`_section` read them), else its defaults."""
    section = sections.get(_SECTION_NAMES[cls])
    if section is None:
        return cls()
    assert isinstance(section, cls)  # _section builds SECTIONS[name] for each name
    return section


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


def shipped_recipes() -> dict[str, Traversable]:
    """The recipes inside the package, name (file stem) -> file, sorted by name."""
    folder = files(__package__) / "recipes"
    if not folder.is_dir():  # an installation without its package data
        return {}
    return {
        f.name.removesuffix(".toml"): f
        for f in sorted(folder.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".toml") and f.is_file()
    }


def resolve_recipe(recipe: str | Path) -> Path | Traversable:
    """A recipe argument as the user gave it -> the file to read: a path to an existing file as it is, else the
    shipped recipe of that name (``demo``, no directory, no ``.toml``).

    Raises:
        ConfigError: neither; the message lists the shipped names.
    """
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if str(recipe) in shipped:
        return shipped[str(recipe)]
    raise ConfigError(
        f"recipe {recipe} not found: neither a file nor a shipped recipe "
        f"({', '.join(shipped) or 'none installed'}; see gee-deploy recipes)"
    )


def read_recipe_file(recipe: str | Path) -> tuple[dict, str]:
    """Read a recipe (a path or a shipped recipe's name, :func:`resolve_recipe`) -> (its sections as parsed
    TOML, its top-level ``description``, "" when it has none). The sections are not checked here.

    Raises:
        ConfigError: not found, not valid TOML, no section at all, or a description that is not a string.
    """
    source = resolve_recipe(recipe)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {recipe} is not valid TOML: {e}") from None
    except OSError as e:  # no read permission, a special file
        raise ConfigError(f"cannot read recipe {recipe}: {e.strerror or e}") from None
    description = data.pop("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"recipe {recipe}: description must be a string, got {description!r}")
    if not data:  # an empty or truncated file would silently train every default
        raise ConfigError(
            f"recipe {recipe} sets nothing (an empty file?); give a recipe, or no RECIPE for the defaults"
        )
    return data, description


def load_recipe(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read a recipe (a file, a shipped recipe's name, or None for the defaults) and apply ``--set`` overrides.

    Raises:
        ConfigError: a recipe not found, unreadable or malformed, or a bad key or value (see
            :func:`recipe_from_dict`).
    """
    data: dict = read_recipe_file(path)[0] if path is not None else {}
    for text in overrides:
        section, key, value = parse_override(text)
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table, got {table!r}")
        table[key] = value
    return recipe_from_dict(data)
