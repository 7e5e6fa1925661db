"""What a resumed run may change: the one rule train --resume, evolution, sweep and ablate apply before they
write anything (docs/training.md, "Resuming").

A run is resumed with the recipe it was started with. Keys that only say how long it runs or how it executes
may differ (:data:`CONTINUABLE`); any other difference (the architecture, the data, the seed, the optimiser,
the schedule's shape) would continue weights and optimiser state that another recipe produced, so it is
refused in one line naming every changed key, before the run directory is touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import ConfigError, reason
from ..recipe import SECTIONS, recipe_from_dict

__all__ = ["CONTINUABLE", "EXECUTION_KEYS", "recipe_changes", "check_resume", "check_run"]

# how a run executes, not what it computes (results may differ in the last bits across devices, not in kind)
EXECUTION_KEYS = frozenset(
    {"data.data_dir", "data.workers", "train.device", "train.threads", "train.compile", "evolution.workers"}
)
# and how long it runs: more (or fewer, not below what is done) epochs continue the same run; more
# generations continue an interrupted evolution
CONTINUABLE = EXECUTION_KEYS | {"train.epochs", "evolution.generations"}


def _flatten(nested: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _normalised(recipe: Mapping) -> Mapping:
    """A recorded recipe with today's defaults for keys added since it was written (as is, if it no longer
    parses: every key then compares as recorded)."""
    if not set(recipe) <= set(SECTIONS):  # evolution settings: compared as they are
        return recipe
    try:
        return recipe_from_dict({k: dict(v) for k, v in recipe.items()}).to_dict()
    except (ConfigError, TypeError, ValueError):
        return recipe


def recipe_changes(recorded: Mapping, requested: Mapping) -> dict[str, tuple]:
    """``{"section.key": (recorded value, requested value)}`` for every key that differs between two nested
    recipes (or evolution settings); a key on one side only pairs with None."""
    old, new = _flatten(recorded), _flatten(requested)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def check_resume(
    recorded: Mapping, requested: Mapping, where: str, allowed: Iterable[str] = CONTINUABLE
) -> dict[str, tuple]:
    """The changes from ``recorded`` (the run's own recipe: its checkpoint's, config.json, an evolution state's
    settings) to ``requested``, when every changed key is in ``allowed``.

    Args:
        where: what is resumed, for the message ("the run in runs/demo").

    Raises:
        ConfigError: one line naming each changed key that is not allowed, with both values.
    """
    changes = recipe_changes(_normalised(recorded), _normalised(requested))
    allowed = set(allowed)
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        shown = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ConfigError(
            f"cannot resume {where} with another recipe: {shown} (a resumed run may change only "
            f"{', '.join(sorted(allowed)) or 'nothing'}); resume with the recorded values, or use "
            "another --out"
        )
    return changes


def check_run(run_dir: str | Path, requested: Mapping, checkpoint: Checkpoint | None = None) -> dict[str, tuple]:
    """:func:`check_resume` of ``requested`` (a recipe as a dict) against the run in ``run_dir``: the recipe
    its last.pt records (``checkpoint``, when already loaded), after which evolution is over and
    evolution.generations may no longer change; else its config.json (an evolution under way). A directory
    that holds neither has nothing to resume: no changes.

    Raises:
        ConfigError: a change a resume may not take, or a run whose config.json cannot be read.
        CheckpointError: an unreadable last.pt.
    """
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    if checkpoint is None and last.exists():
        checkpoint = load_checkpoint(last)
    if checkpoint is not None and checkpoint.recipe:
        recorded = checkpoint.recipe
    elif not (run_dir / "config.json").exists() and not (run_dir / "evolution.jsonl").exists():
        return {}
    else:
        try:
            recorded = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot resume the run in {run_dir}: its recipe, config.json, cannot be read ({reason(e)})"
            ) from None
    allowed = CONTINUABLE - ({"evolution.generations"} if checkpoint is not None else set())
    return check_resume(recorded, requested, f"the run in {run_dir}", allowed)
