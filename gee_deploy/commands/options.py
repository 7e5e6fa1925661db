"""Options shared by several commands, and the parameter types that check a value where click parses it.

Numbers are checked against the same declarations as recipe keys (:mod:`gee_deploy.recipe`: a type with its
range), so ``--genes -5`` and ``--set model.genes=-5`` fail with the same words; output paths are checked for
writability before a command loads anything, and compared with the command's inputs (:func:`refuse_replacing`:
an output never replaces an input). Every failure is a one-line :class:`ConfigError` naming the
option (docs/design.md, "Errors and exit codes").
"""

from __future__ import annotations

import os
import tempfile
import typing
from pathlib import Path
from typing import Annotated

import click
from pydantic import Field

from ..errors import ConfigError
from ..recipe import check_value, describe, unwrap

__all__ = [
    "set_option",
    "quiet_option",
    "onnx_runtime_option",
    "Value",
    "NumberList",
    "ChoiceList",
    "OutPath",
    "check_writable",
    "refuse_replacing",
    "recipe_inputs",
    "with_range",
    "NON_NEGATIVE",
    "FRACTION",
    "COUNT",
    "AT_LEAST_ONE",
    "THREADS",
    "SEED",
]

set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a recipe value, e.g. --set train.epochs=3, or --set model.genes=0 for the dense twin "
    "(repeatable; values parse as TOML literals).",
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")


def onnx_runtime_option(what: str):
    """``--runtime`` (reaching the command as ``kind``): the onnxruntime runtime that runs ``what``
    (:data:`gee_deploy.ort_session.PROVIDERS`; default its CPU provider)."""
    from ..ort_session import PROVIDERS

    return click.option(
        "--runtime",
        "kind",
        default="ort-cpu",
        show_default=True,
        type=click.Choice(list(PROVIDERS)),
        help=f"What runs {what}: onnxruntime's CPU, CUDA or TensorRT provider, or OpenVINO through onnxruntime's "
        "OpenVINO plugin (gee-deploy[openvino]) in f32 (exact) or bf16.",
    )


def data_dir_option(help: str = "Where the dataset lives (default: its standard place)."):
    """``--data-dir``: an existing directory (a missing one is one usage error, before any work)."""
    return click.option("--data-dir", default=None, type=click.Path(file_okay=False, exists=True), help=help)


# ranges of options that are not recipe keys (those use gee_deploy.recipe.recipe_field)
NON_NEGATIVE = Annotated[float, Field(ge=0, le=1e300)]
FRACTION = Annotated[float, Field(ge=0, le=1)]
COUNT = Annotated[int, Field(ge=0, le=2**62)]  # 0 = all / none
AT_LEAST_ONE = Annotated[int, Field(ge=1, le=2**62)]
THREADS = Annotated[int, Field(ge=1, le=4096)]
SEED = Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy's SeedSequence takes non-negative integers


def _option_name(param) -> str:
    return param.opts[0] if param is not None and param.opts else (param.human_readable_name if param else "value")


def _parse(text, kind: type, name: str):
    if not isinstance(text, str):
        return text
    try:
        return kind(text.strip())
    except ValueError:
        words = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name} must be {words}, got {text!r}") from None


class Value(click.ParamType):
    """A value checked against a declared type and range, e.g. ``Value(recipe_field("data.batch_size"))``:
    an integer, a float (finite) or a constrained string."""

    def __init__(self, annotation):
        self.annotation = annotation
        self.kind = {int: int, float: float}.get(unwrap(annotation)[0], str)
        self.name = {int: "integer", float: "float"}.get(self.kind, "text")

    def convert(self, value, param, ctx):
        name = _option_name(param)
        return check_value(self.annotation, _parse(value, self.kind, name), name)


class NumberList(Value):
    """Comma-separated numbers, each checked like :class:`Value`; a tuple. An empty item (``1,,16``, a
    trailing comma) is refused: it is a typo, not a value."""

    def __init__(self, annotation):
        super().__init__(annotation)
        self.name = f"{self.name}s"

    def get_metavar(self, param, ctx=None):
        return "N1,N2,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        name = _option_name(param)
        parts = str(value).split(",")
        if not str(value).strip():
            raise ConfigError(f"{name} is empty: give comma-separated values, each {describe(self.annotation)}")
        if any(not v.strip() for v in parts):
            raise ConfigError(
                f"{name} {value!r} has an empty item: give comma-separated values without empty "
                f"ones, each {describe(self.annotation)}"
            )
        return tuple(check_value(self.annotation, _parse(v, self.kind, name), name) for v in parts)


class ChoiceList(click.ParamType):
    """Comma-separated names from a registry; a tuple without repeats. An empty item is refused, as in
    :class:`NumberList`."""

    name = "names"

    def __init__(self, choices: typing.Iterable[str]):
        self.choices = tuple(choices)

    def get_metavar(self, param, ctx=None):
        return ",".join(self.choices[:2]) + ",..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        name = _option_name(param)
        parts = [v.strip() for v in str(value).split(",")]
        if str(value).strip() and not all(parts):
            raise ConfigError(
                f"{name} {value!r} has an empty item: give comma-separated names from {', '.join(self.choices)}"
            )
        items = tuple(dict.fromkeys(v for v in parts if v))
        unknown = [v for v in items if v not in self.choices]
        if unknown or not items:
            got = f"got {unknown[0]!r}" if unknown else "got none"
            raise ConfigError(f"{name} takes comma-separated names from {', '.join(self.choices)}; {got}")
        return items


def check_writable(path: str | os.PathLike, directory: bool | None, name: str = "--out") -> Path:
    """Refuse, before any work, an output ``path`` that cannot be written: an empty name, a directory where a
    file is wanted (``directory=False``) or the reverse (True; None: either), a path under a regular file,
    a file whose folder does not exist (a misspelt folder is not created silently; a directory output is
    created with its missing parents, as run directories like runs/demo are), or a nearest existing folder in
    which no file can be created (permissions, a read-only file system).

    Raises:
        ConfigError: one line naming ``name``, the path and why.
    """
    if not str(path).strip():
        raise ConfigError(f"{name} is empty: give a path to write")
    target = Path(path)
    if target.exists():
        if directory is True and not target.is_dir():
            raise ConfigError(f"cannot write {name} {path}: it is a file, not a directory")
        if directory is False and target.is_dir():
            raise ConfigError(f"cannot write {name} {path}: it is a directory, not a file")
    absolute = target.absolute()
    if directory is False and not absolute.parent.exists():
        raise ConfigError(f"cannot write {name} {path}: its folder {absolute.parent} does not exist (create it first)")
    existing = absolute if absolute.is_dir() else next(p for p in absolute.parents if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"cannot write {name} {path}: {existing} is a file, not a directory")
    try:  # the real test: create a file there (os.access says yes to root even on /proc)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ConfigError(
            f"cannot write {name} {path}: no file can be created in {existing} ({e.strerror or e})"
        ) from None
    return target


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name one file or directory: equal once links are resolved, or one inode (a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist
        return False


def refuse_replacing(
    out: str | os.PathLike,
    inputs: typing.Iterable[str | os.PathLike | None],
    name: str = "--out",
    replaces_directory: bool = False,
) -> None:
    """Refuse, before any work, an output that would replace one of the command's ``inputs`` (None skipped):
    ``out`` names an input (the same file or directory once symbolic links are resolved, or a hard link to
    it), or ``out`` is a directory the command replaces as a whole (``replaces_directory``: a Triton
    repository) and an input lies inside it. Every command that writes checks its outputs here.

    Raises:
        ConfigError: one line naming the option, the output and the input.
    """
    target = Path(out)
    for given in inputs:
        if given is None or not str(given).strip():
            continue
        source = Path(given)
        if _same(target, source):
            raise ConfigError(f"{name} {out} is the input {given}: writing it would replace it; choose another {name}")
        if replaces_directory and target.resolve() in source.resolve().parents:
            raise ConfigError(
                f"{name} {out} would replace the directory holding the input {given}; choose another {name}"
            )


def recipe_inputs(recipe: str | None, loaded) -> list[str]:
    """The input paths of a command that reads a recipe: the recipe file (a shipped recipe's name is none) and
    its data.data_dir, for :func:`refuse_replacing`."""
    return [p for p in (recipe if recipe is not None and Path(recipe).is_file() else None, loaded.data.data_dir) if p]


class OutPath(click.ParamType):
    """An output path, checked by :func:`check_writable` while the options are parsed."""

    name = "path"

    def __init__(self, directory: bool | None):
        self.directory = directory

    def get_metavar(self, param, ctx=None):
        return {True: "DIR", False: "FILE", None: "PATH"}[self.directory]

    def convert(self, value, param, ctx):
        check_writable(value, self.directory, _option_name(param))
        return str(value)


def with_range(text: str, annotation) -> str:
    """An option's help with its declared range appended: "Images per call (an integer >= 1)."."""
    return f"{text.rstrip('.')} ({describe(annotation)})."
