"""Options shared by several commands, defined once."""
from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import ConfigError

set_option = click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
    help="Override a recipe value, e.g. --set train.epochs=3 (repeatable; values parse as TOML literals).")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")


def parse_list(text: str, kind: type, option: str) -> list:
    """``"4,8,16"`` -> [4, 8, 16] of ``kind``; a :class:`ConfigError` naming ``option`` when an item does not
    parse (so the CLI prints one ``error:`` line, not click's usage block). Empty items are skipped."""
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} expects comma-separated {kind.__name__}s, got {text!r}") from None


def check_out_dir(out: str) -> None:
    """Fail before minutes of work, not after, when ``out`` cannot be created or written."""
    existing = next(p for p in (Path(out).absolute(), *Path(out).absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(f"cannot write {out}: {existing} is not a writable directory")
