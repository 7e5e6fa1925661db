"""The registry of architectures: ``register_model`` (used by every family file), ``create_model``,
``list_models``, ``model_defaults``. Kept apart from the package ``__init__`` so the family files import it
downward; the ``__init__`` imports the families, which registers them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from ..errors import UnknownModelError
from .base import SpikingNet

__all__ = ["register_model", "create_model", "list_models", "model_defaults"]

_MODELS: dict[str, Callable[..., SpikingNet]] = {}


def register_model(fn: Callable[..., SpikingNet]) -> Callable[..., SpikingNet]:
    """Register an architecture variant under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_defaults(name: str) -> dict:
    """The keyword arguments ``name`` takes, with their defaults."""
    if name not in _MODELS:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}")
    sig = inspect.signature(_MODELS[name])
    return {k: p.default for k, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}


def create_model(name: str, **kwargs) -> SpikingNet:
    """Build architecture ``name``; the model keeps ``model_name`` and the resolved ``model_args``."""
    defaults = model_defaults(name)
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise UnknownModelError(
            f"model {name!r} takes no argument(s) {', '.join(unknown)}; it takes {', '.join(defaults)}"
        )
    args = {**defaults, **{k: v for k, v in kwargs.items() if v is not None}}
    if "genes" in kwargs and not kwargs["genes"]:
        args["genes"] = None  # genes=None (or 0 from a recipe / CLI) asks for the dense twin
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}  # TOML / JSON arrays: mean, widths
    model = _MODELS[name](**args)
    model.model_name = name
    model.model_args = args
    return model
