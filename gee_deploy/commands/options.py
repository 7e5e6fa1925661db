"""Options shared by several commands, defined once."""
from __future__ import annotations

import click

set_option = click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
    help="Override a recipe value, e.g. --set train.epochs=3 (repeatable; values parse as TOML literals).")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
