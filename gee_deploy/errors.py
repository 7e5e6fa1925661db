"""Exceptions the CLI turns into one line and a non-zero exit code."""

from __future__ import annotations


class GeeError(Exception):
    """Base of every error a user can cause; ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class ConfigError(GeeError):
    """A recipe, a --set override or a command option is wrong."""


class DataError(GeeError):
    """A dataset is missing, unknown or malformed."""


class CheckpointError(GeeError):
    """A checkpoint is missing, truncated, not a checkpoint, or of another architecture."""


class UnknownModelError(ConfigError):
    """No architecture is registered under that name."""


class ModelFileError(GeeError):
    """A model file (ONNX graph, TensorRT plan) is missing, corrupt or lacks the gee-deploy metadata."""


class UnsupportedModuleError(GeeError):
    """The model contains a module or operation that cannot be walked or written as the requested graph."""


class InputError(GeeError):
    """An input tensor has the wrong shape or dtype, or holds NaN/Inf."""


class RuntimeUnavailableError(GeeError):
    """A runtime was asked for that this machine cannot provide (no CUDA, no TensorRT)."""


class MissingExtraError(RuntimeUnavailableError):
    """A package that an install extra provides is not installed (the message names the extras)."""


def reason(error: BaseException, limit: int = 200) -> str:
    """A library's exception as the tail of one of our one-line messages: its first line, cut at the last
    sentence end (or word) within ``limit`` characters, never mid-word; the type's name when it says nothing."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if len(text) <= limit:
        return text
    head = text[:limit]
    end = head.rfind(". ")
    if end > 0:
        return head[:end]
    cut = head.rfind(" ")
    return (head[:cut] if cut > 0 else head).rstrip(",;:") + " ..."
