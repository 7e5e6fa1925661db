"""gee-deploy: genetically encoded spiking neural networks, from evolution to deployment.

Python API::

    from gee_deploy import create_model, export_model, list_models, load_model

Attributes are imported on first use, so ``gee-deploy --help`` does not pay for importing torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["create_model", "export_model", "list_models", "load_model", "__version__"]


def __getattr__(name: str):
    if name in ("create_model", "list_models"):
        from . import zoo

        return getattr(zoo, name)
    if name == "load_model":
        from .checkpoint import load_model

        return load_model
    if name == "export_model":
        from .formats import export_model

        return export_model
    raise AttributeError(f"module 'gee_deploy' has no attribute {name!r}")
