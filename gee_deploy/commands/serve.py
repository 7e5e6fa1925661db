from __future__ import annotations

import click


@click.command()
@click.argument("model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--name", default=None, help="Model name in the URLs (default: the file's stem).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address; 0.0.0.0 exposes the server to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1),
              help="Largest dynamic batch (samples per onnxruntime call).")
@click.option("--max-delay-ms", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="How long the first request of a batch waits for others.")
@click.option("--max-body-mb", default=16.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Larger request bodies are refused with 413.")
@click.option("--runtime", "kind", default="ort-cpu", show_default=True,
              type=click.Choice(["ort-cpu", "ort-cuda", "ort-trt"]), help="onnxruntime execution provider.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="onnxruntime intra-op threads.")
def serve(model, name, host, port, max_batch, max_delay_ms, max_body_mb, kind, threads):
    """Serve MODEL.onnx over the Open Inference Protocol (KServe v2 REST) with dynamic batching.

    Works with stock clients such as tritonclient.http; Prometheus metrics at /metrics. Ctrl-C stops it.
    """
    from pathlib import Path

    from ..serving.runtimes import OrtRuntime
    from ..serving.server import InferenceServer

    runtime = OrtRuntime(model, kind, threads)
    name = name or Path(model).stem
    try:
        server = InferenceServer(runtime, name, host, port, max_batch, max_delay_ms, int(max_body_mb * (1 << 20)))
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--name") from None
    click.echo(f"serving {name} ({model}) at http://{server.url}/v2/models/{name}/infer; metrics at /metrics", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
