"""Errors of the export stage; the CLI turns each into one line and its ``exit_code``."""

from __future__ import annotations

from ..errors import ConfigError, GeeError, UnsupportedModuleError

__all__ = [
    "ExportError",
    "UnsupportedModuleError",
    "ExportValidationError",
    "ShapeError",
    "ToleranceError",
    "TensorRTUnavailableError",
    "UnknownOptionError",
]


class ExportError(GeeError):
    """The model cannot be written as the requested graph."""


class UnknownOptionError(ConfigError):
    """An unknown variant, format or other option name."""


class TensorRTUnavailableError(ExportError):
    """``--format tensorrt`` on a machine without the ``tensorrt`` package."""


class ShapeError(ExportError):
    """An exported graph's outputs have other names or shapes than the contract."""


class ToleranceError(ExportError):
    """An exported graph's values differ from the PyTorch model by more than the tolerance."""


class ExportValidationError(ExportError):
    """One or more validation checks failed; the message lists every one of them."""

    exit_code = 1

    def __init__(self, message: str, failures: list[ExportError]):
        super().__init__(message)
        self.failures = failures
