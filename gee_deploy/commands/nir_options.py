"""The options of `gee-deploy export MODEL.nir` (a NIR graph from any framework), defined once, and the
:class:`~gee_deploy.nir.options.NIRImportOptions` they build."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
from pydantic import Field

from ..errors import ConfigError
from ..nir.importer import INPUT_MODES
from ..nir.options import NIRImportOptions
from ..recipe import recipe_field
from .options import Value

DT = Annotated[float, Field(gt=0, le=1e3)]  # seconds

NIR_OPTIONS = ("timesteps", "input_mode", "dt", "threshold_rule", "images")


def nir_options(f):
    """Add the NIR import options to a command (they reach it as keyword arguments named as NIR_OPTIONS)."""
    options = [
        click.option(
            "--timesteps",
            "-T",
            type=Value(recipe_field("model.timesteps")),
            default=None,
            help="NIR input only: T, the steps unrolled in the graph (default: the T a file exported by "
            "gee-deploy records; required for other frameworks' files).",
        ),
        click.option(
            "--input",
            "input_mode",
            default=None,
            type=click.Choice(INPUT_MODES),
            help="NIR input only: static repeats one input over the T steps (direct encoding, default); "
            "sequence takes [N, T, ...] per-step inputs (event data).",
        ),
        click.option(
            "--dt",
            type=Value(DT),
            default=None,
            help="NIR input only: the Euler step in seconds (default: the file's metadata; SpikingJelly and "
            "snntorch export with 1e-4).",
        ),
        click.option(
            "--threshold-rule",
            default=None,
            type=click.Choice(["gt", "ge"]),
            help="NIR input only: gt fires on v > v_th as NIR defines it (snntorch, default); ge on "
            "v >= v_th (SpikingJelly). See docs/nir.md.",
        ),
        click.option(
            "--images",
            type=click.Path(dir_okay=False),
            default=None,
            help="NIR input only: a .npy of validation inputs in the graph's input layout (default: the "
            "test images of the dataset a file exported by gee-deploy names, when they are here; "
            "else random inputs of the declared shape).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def nir_import_options(model: str, given: dict, **checkpoint_only) -> NIRImportOptions | None:
    """When ``model`` is a .nir file: its :class:`~gee_deploy.nir.options.NIRImportOptions` from the NIR options
    ``given`` (keyword arguments named as NIR_OPTIONS); else None. :class:`ConfigError` (one line) for an option
    of the other kind (given before any work): a NIR option with a checkpoint, or a checkpoint-only option
    (``checkpoint_only``: its name -> the value given) with a .nir file."""
    is_nir = Path(model).suffix.lower() == ".nir"
    if not is_nir:
        extra = [k for k in NIR_OPTIONS if given.get(k) is not None]
        if extra:
            raise ConfigError(f"--{extra[0].replace('_mode', '').replace('_', '-')} applies only to a .nir input")
        return None
    wrong = [k for k, v in checkpoint_only.items() if v]
    if wrong:
        raise ConfigError(f"--{wrong[0].replace('_', '-')} does not apply to a .nir input (it applies to checkpoints)")
    return NIRImportOptions(
        timesteps=given["timesteps"],
        input_mode=given["input_mode"] or "static",
        dt=given["dt"],
        threshold_rule=given["threshold_rule"] or "gt",
        images=None if given["images"] is None else Path(given["images"]),
    )
