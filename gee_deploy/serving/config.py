"""One object for everything `gee-deploy serve` can be told, checked once where it is built (as
``uvicorn.Config`` is handed to ``uvicorn.Server``).

:class:`ServeConfig` is frozen; :class:`~.server.InferenceServer` and :class:`~.service.ModelService` read
its fields and check nothing again. A bad value raises :class:`ServeConfigError` naming the field and the
``gee-deploy serve`` option that sets it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError
from ..triton_config import (
    DEFAULT_MAX_QUEUE_DELAY_MS,
    DEFAULT_MAX_SEQUENCES,
    DEFAULT_SEQUENCE_IDLE_S,
)

__all__ = ["ServeConfig", "ServeConfigError"]

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class ServeConfigError(ConfigError, ValueError):
    """A value of :class:`ServeConfig` out of its range; the message names the field and its option."""


def _flag(field: str) -> str:
    return {"max_body_bytes": "--max-body-mb", "sequence_idle_s": "--sequence-idle-s"}.get(
        field, "--" + field.replace("_", "-")
    )


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """What one server serves and its limits.

    Attributes:
        name: the model name in URLs (letters, digits, ``_.-``).
        host: bind address; loopback unless told otherwise.
        port: HTTP port; 0 picks a free one.
        grpc_port: gRPC port (0 picks one); None serves no gRPC.
        max_batch: largest dynamic batch in samples (Triton's ``max_batch_size``).
        max_delay_ms: how long the first request of a batch waits for company.
        max_body_bytes: larger request bodies get 413 (gRPC: RESOURCE_EXHAUSTED).
        infer_timeout_s: seconds a request may wait for its batch before a 503.
        request_timeout_s: seconds a client has to send a whole request before a 408 and disconnect.
        keep_alive_s: idle keep-alive connections close after this.
        max_concurrency: inference requests in flight before 503 (gRPC: UNAVAILABLE).
        drain_s: bound on the graceful shutdown.
        idle_grace_s: while draining, how long an idle keep-alive connection may still send a request.
        max_sequences: streaming graphs: live sequences the state table holds before a new
            ``sequence_start`` is refused.
        sequence_idle_s: streaming graphs: a sequence with no step for this long is dropped (Triton's
            ``max_sequence_idle_microseconds``).

    Raises:
        ServeConfigError: a value out of range (the field and its option named).
    """

    name: str = "gee"
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None
    max_batch: int = 32
    max_delay_ms: float = DEFAULT_MAX_QUEUE_DELAY_MS
    max_body_bytes: int = 16 << 20
    infer_timeout_s: float = 30.0
    request_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_concurrency: int = 256
    drain_s: float = 10.0
    idle_grace_s: float = 1.0
    max_sequences: int = DEFAULT_MAX_SEQUENCES
    sequence_idle_s: float = DEFAULT_SEQUENCE_IDLE_S

    def __post_init__(self):
        if not _NAME.fullmatch(self.name):
            raise ServeConfigError(f"name ({_flag('name')}) {self.name!r} must be letters, digits, '_', '.', '-'")
        at_least_one = ("max_batch", "max_body_bytes", "max_concurrency", "max_sequences")
        positive = ("infer_timeout_s", "request_timeout_s", "keep_alive_s", "sequence_idle_s")
        non_negative = ("max_delay_ms", "drain_s", "idle_grace_s")
        for fields, ok, words in (
            (at_least_one, lambda v: v >= 1, ">= 1"),
            (positive, lambda v: v > 0, "> 0"),
            (non_negative, lambda v: v >= 0, ">= 0"),
        ):
            for f in fields:
                if not ok(getattr(self, f)):
                    raise ServeConfigError(f"{f} ({_flag(f)}) must be {words}, got {getattr(self, f)}")
        for f in ("port", "grpc_port"):
            v = getattr(self, f)
            if v is not None and not 0 <= v <= 65535:
                raise ServeConfigError(f"{f} ({_flag(f)}) must be in 0..65535, got {v}")
