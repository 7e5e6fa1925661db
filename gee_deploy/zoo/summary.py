"""Parameter counts of the zoo (dense twin vs genetic), for `gee-deploy models` and docs/results.md."""

from __future__ import annotations

from torch import nn

from .registry import create_model, model_defaults


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (shared encodings and G counted once)."""
    return sum(p.numel() for p in model.parameters())


def parameter_table(names: list[str], genes: int | None = None) -> list[dict]:
    """One row per architecture: dense-twin and genetic parameter counts at ``genes`` (None: each model's
    default; 0: the dense twin, as ``model.genes = 0`` in a recipe, so both counts are the dense twin's)."""
    rows = []
    for name in names:
        model_genes = genes if genes is not None else model_defaults(name)["genes"]
        dense = count_parameters(create_model(name, genes=None))
        genetic = count_parameters(create_model(name, genes=model_genes or None))
        rows.append(
            {
                "model": name,
                "genes": model_genes,
                "dense_params": dense,
                "genetic_params": genetic,
                "ratio": genetic / dense,
            }
        )
    return rows
