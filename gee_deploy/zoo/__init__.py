"""Model zoo: architectures registered by name, one file per family.

``create_model(name, **kwargs)`` drops ``None`` kwargs, so CLI options that default to ``None`` only
override an architecture's own defaults when the user sets them. The one exception is ``genes``: an
explicit ``genes=None`` (or ``0``, as recipes and the CLI spell it) builds the dense twin.
"""

from __future__ import annotations

from . import cifarnet, resnet, smallnet, vgg  # noqa: F401  (each registers its variants)
from .registry import create_model, list_models, model_defaults, register_model

__all__ = ["register_model", "create_model", "list_models", "model_defaults"]
