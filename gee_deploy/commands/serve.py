from __future__ import annotations

import os
import socket
from typing import Annotated

import click
from pydantic import Field

from ..errors import ConfigError
from ..triton_config import DEFAULT_MAX_SEQUENCES, DEFAULT_SEQUENCE_IDLE_S
from .options import AT_LEAST_ONE, THREADS, Value, onnx_runtime_option

MS = Annotated[float, Field(ge=0, le=3_600_000)]
SECONDS = Annotated[float, Field(gt=0, le=86_400)]
GRACE = Annotated[float, Field(ge=0, le=86_400)]  # seconds, 0 = none
MEGABYTES = Annotated[float, Field(ge=0.001, le=1 << 20)]


def _check_port(host: str, port: int, protocol: str) -> None:
    """One line naming the port that cannot be bound (busy, privileged, unknown host), before the model loads."""
    try:
        socket.create_server((host, port)).close()
    except OSError as e:  # create_server appends the address to strerror; os.strerror has the reason alone
        why = os.strerror(e.errno) if e.errno and e.errno > 0 else e.strerror or str(e)
        raise ConfigError(f"cannot listen on {host}:{port} ({protocol}): {why}") from None


@click.command()
@click.argument("model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--name", default=None, help="Model name in the URLs (default: the file's stem).")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Bind address; 0.0.0.0 exposes the server to the network."
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="HTTP port.")
@click.option(
    "--grpc-port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Also serve the Open Inference Protocol over gRPC on this port (Triton uses 8001).",
)
@click.option(
    "--max-batch",
    default=32,
    show_default=True,
    type=Value(AT_LEAST_ONE),
    help="Largest dynamic batch (samples per onnxruntime call); a single request of more samples is "
    "refused with 400, so clients split larger inputs.",
)
@click.option(
    "--max-delay-ms",
    default=2.0,
    show_default=True,
    type=Value(MS),
    help="How long the first request of a batch waits for others.",
)
@click.option(
    "--max-body-mb",
    default=16.0,
    show_default=True,
    type=Value(MEGABYTES),
    help="Larger request bodies are refused with 413.",
)
@click.option(
    "--max-concurrency",
    default=256,
    show_default=True,
    type=Value(AT_LEAST_ONE),
    help="Inference requests in flight (HTTP and gRPC) before new ones get 503.",
)
@click.option(
    "--request-timeout-s",
    default=30.0,
    show_default=True,
    type=Value(SECONDS),
    help="A client that has not sent its whole request by then gets 408 and is disconnected.",
)
@click.option(
    "--drain-s",
    default=10.0,
    show_default=True,
    type=Value(GRACE),
    help="On SIGTERM/SIGINT: how long in-flight requests may take to finish before exit.",
)
@click.option(
    "--max-sequences",
    default=DEFAULT_MAX_SEQUENCES,
    show_default=True,
    type=Value(AT_LEAST_ONE),
    help="Streaming graphs: live sequences held before a new sequence_start is refused (429).",
)
@click.option(
    "--sequence-idle-s",
    default=DEFAULT_SEQUENCE_IDLE_S,
    show_default=True,
    type=Value(SECONDS),
    help="Streaming graphs: a sequence without a step for this long is dropped (Triton's "
    "max_sequence_idle_microseconds).",
)
@onnx_runtime_option("MODEL.onnx")
@click.option("--threads", default=None, type=Value(THREADS), help="onnxruntime intra-op threads.")
def serve(
    model,
    name,
    host,
    port,
    grpc_port,
    max_batch,
    max_delay_ms,
    max_body_mb,
    max_concurrency,
    request_timeout_s,
    drain_s,
    max_sequences,
    sequence_idle_s,
    kind,
    threads,
):
    """Serve MODEL.onnx over the Open Inference Protocol (KServe v2 REST, optionally gRPC) with dynamic batching.

    Works with stock clients such as tritonclient (HTTP and gRPC); Prometheus metrics at /metrics. SIGTERM or
    Ctrl-C drains in-flight requests (bounded by --drain-s) and exits 0. A streaming export (export --streaming)
    is served one timestep per request with Triton's sequence extension (sequence_id, sequence_start,
    sequence_end), its membranes held per sequence in this process (docs/streaming.md).
    """
    from pathlib import Path

    from ..ort_session import require_runtime
    from ..serving.config import ServeConfig
    from ..serving.runtimes import OrtRuntime
    from ..serving.server import InferenceServer, ready_line

    require_runtime(kind)
    suffix = Path(model).suffix.lower()
    if suffix == ".nir":
        raise ConfigError(
            f"serve runs ONNX files; convert {model} first: gee-deploy export {model} --out "
            f"{Path(model).with_suffix('.nir.onnx')} (a file from another framework also needs "
            "--timesteps T)"
        )
    if suffix in (".pt", ".pth"):
        raise ConfigError(
            f"serve runs ONNX files; {model} looks like a checkpoint: export it first, gee-deploy "
            f"export {model} --out {Path(model).with_suffix('.onnx')}"
        )
    if name is not None and not name.strip():
        raise ConfigError(
            "--name is empty: give the model's name in the URLs, or leave --name out for the file's "
            f"stem ({Path(model).stem})"
        )
    name = name or Path(model).stem
    config = ServeConfig(
        name=name,
        host=host,
        port=port,
        grpc_port=grpc_port,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        max_body_bytes=int(max_body_mb * (1 << 20)),
        request_timeout_s=request_timeout_s,
        max_concurrency=max_concurrency,
        drain_s=drain_s,
        max_sequences=max_sequences,
        sequence_idle_s=sequence_idle_s,
    )
    if grpc_port is not None and grpc_port == port and port != 0:
        raise ConfigError(f"--grpc-port {grpc_port} is the HTTP --port too; give each protocol its own port")
    _check_port(host, port, "HTTP")
    if grpc_port:
        _check_port(host, grpc_port, "gRPC")
    runtime = OrtRuntime(model, kind, threads, allow_streaming=True)
    try:
        server = InferenceServer(runtime, config)
    except OSError as e:  # taken between the check above and now
        ports = f"{host}:{port} (HTTP)" + (f" or {host}:{grpc_port} (gRPC)" if grpc_port else "")
        raise ConfigError(f"cannot listen on {ports}: {os.strerror(e.errno) if e.errno else e}") from None

    def announce() -> None:
        grpc = f"{host}:{server.grpc_port}" if grpc_port is not None else None
        click.echo(ready_line(name, model, server.url, grpc), err=True)

    try:
        server.serve_forever(on_ready=announce)
    except OSError as e:
        raise ConfigError(str(e)) from None
    click.echo("stopped", err=True)
