from __future__ import annotations

import click


@click.command()
@click.argument("model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--name", default=None, help="Model name in the URLs (default: the file's stem).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address; 0.0.0.0 exposes the server to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="HTTP port.")
@click.option("--grpc-port", default=None, type=click.IntRange(0, 65535),
              help="Also serve the Open Inference Protocol over gRPC on this port (Triton uses 8001).")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1),
              help="Largest dynamic batch (samples per onnxruntime call).")
@click.option("--max-delay-ms", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="How long the first request of a batch waits for others.")
@click.option("--max-body-mb", default=16.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Larger request bodies are refused with 413.")
@click.option("--max-concurrency", default=256, show_default=True, type=click.IntRange(min=1),
              help="Inference requests in flight (HTTP and gRPC) before new ones get 503.")
@click.option("--request-timeout-s", default=30.0, show_default=True, type=click.FloatRange(min=0.001),
              help="A client that has not sent its whole request by then gets 408 and is disconnected.")
@click.option("--drain-s", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="On SIGTERM/SIGINT: how long in-flight requests may take to finish before exit.")
@click.option("--runtime", "kind", default="ort-cpu", show_default=True,
              type=click.Choice(["ort-cpu", "ort-cuda", "ort-trt"]), help="onnxruntime execution provider.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="onnxruntime intra-op threads.")
def serve(model, name, host, port, grpc_port, max_batch, max_delay_ms, max_body_mb, max_concurrency,
          request_timeout_s, drain_s, kind, threads):
    """Serve MODEL.onnx over the Open Inference Protocol (KServe v2 REST, optionally gRPC) with dynamic batching.

    Works with stock clients such as tritonclient (HTTP and gRPC); Prometheus metrics at /metrics. SIGTERM or
    Ctrl-C drains in-flight requests (bounded by --drain-s) and exits 0.
    """
    import os
    from pathlib import Path

    from ..serving.runtimes import OrtRuntime
    from ..serving.server import InferenceServer, ready_line

    runtime = OrtRuntime(model, kind, threads)
    name = name or Path(model).stem
    try:
        server = InferenceServer(runtime, name, host, port, grpc_port, max_batch, max_delay_ms,
                                 int(max_body_mb * (1 << 20)), request_timeout_s=request_timeout_s,
                                 max_concurrency=max_concurrency, drain_s=drain_s)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        where = f"{host}:{port}" + (f" (gRPC {host}:{grpc_port})" if grpc_port is not None else "")
        raise click.ClickException(f"cannot listen on {where}: {reason}") from None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--name") from None

    def announce() -> None:
        grpc = f"{host}:{server.grpc_port}" if grpc_port is not None else None
        click.echo(ready_line(name, model, server.url, grpc), err=True)

    try:
        server.serve_forever(on_ready=announce)
    except OSError as e:
        raise click.ClickException(str(e)) from None
    click.echo("stopped", err=True)
