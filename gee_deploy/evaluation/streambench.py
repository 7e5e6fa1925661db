"""`gee-deploy bench` on a streaming graph: what serving an SNN online costs, beside the unrolled graph.

A streaming export runs one timestep per call (docs/export.md); ``gee-deploy serve`` keeps each sequence's
membranes and batches the steps of different sequences (docs/streaming.md). This measures, on this machine:

* the graph alone: one step of one sequence (``Runtime.step`` at batch 1: p50/p90/p99 ms per step), and one step
  of N sequences in one call (steps/s);
* through the server: N sequences stepped in lockstep over one gRPC ``ModelStreamInfer`` stream (each round sends
  one step of every sequence, then waits for the N answers; a sequence restarts after T steps), for ``min_time``
  seconds per N: steps/s, sequences/s (steps/s / T) and p50/p99 ms per round; at N = 1 a round is one step, so
  its p50 is the per-step latency a client sees. The server runs in this process on loopback, with the same
  intra-op threads;
* with the unrolled graph given too: its samples/s at batch N (one call does all T steps of N samples), the
  number a sequence/s of the stream compares with.

Inputs are uniform random images of the graph's input shape, fed at every step (the dense graphs' cost does not
depend on the values). Every answer is checked: an error message in the stream fails the run.
"""

from __future__ import annotations

import os
import platform
import queue
import time
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from ..serving.runtimes import OrtRuntime
from ..spec import INPUT_NAME, ModelSpec
from .bench import time_runtime

__all__ = ["is_streaming", "run_stream_bench", "stream_table", "write_stream_report"]


def is_streaming(path: str | os.PathLike) -> bool:
    """Is ``path`` a streaming ONNX export (``gee.streaming``)? False for anything else, without raising."""
    p = Path(path)
    if p.suffix.lower() != ".onnx" or not p.is_file():
        return False
    try:
        return ModelSpec.from_onnx(p).streaming
    except ModelFileError:
        return False


def _time_steps(runtime: OrtRuntime, n: int, x: np.ndarray, min_time: float, min_iters: int = 20) -> dict:
    """Graph alone: ``Runtime.step`` on ``n`` sequences with the membranes fed back (restarting after T steps)."""
    zeros = {k: np.zeros((n, *s), np.float32) for k, s in runtime.state_shapes.items()}
    xb = np.ascontiguousarray(np.repeat(x, n, axis=0))
    states = zeros
    times: list[float] = []
    for _ in range(3):
        runtime.step(xb, zeros)
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        if len(times) % runtime.spec.timesteps == 0:
            states = zeros
        t0 = time.perf_counter()
        _, _, states = runtime.step(xb, states)
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "sequences": n,
        "iters": len(times),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "steps_per_s": float(n * len(times) / (ms.sum() / 1e3)),
    }


def _serve_steps(
    port: int, model: str, n: int, x: np.ndarray, timesteps: int, min_time: float, min_rounds: int = 20
) -> dict:
    """Through the server: ``n`` sequences in lockstep over one ModelStreamInfer stream."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()

    def request(sid: int, t: int) -> service_pb2.ModelInferRequest:
        req = service_pb2.ModelInferRequest(model_name=model, id=str(sid))
        tensor = req.inputs.add(name=INPUT_NAME, datatype="FP32")
        tensor.shape.extend(x.shape)
        req.raw_input_contents.append(raw)
        req.parameters["sequence_id"].int64_param = sid
        req.parameters["sequence_start"].bool_param = t == 0
        req.parameters["sequence_end"].bool_param = t == timesteps - 1
        return req

    outbox: queue.Queue = queue.Queue()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answers = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(outbox.get, None))
        rounds: list[float] = []
        errors: list[str] = []
        t = 0
        start = time.perf_counter()
        while len(rounds) < min_rounds or time.perf_counter() - start < min_time or t != 0:
            t0 = time.perf_counter()
            for sid in range(1, n + 1):
                outbox.put(request(sid, t))
            for _ in range(n):
                answer = next(answers)
                if answer.error_message:
                    errors.append(answer.error_message)
            rounds.append(time.perf_counter() - t0)
            t = (t + 1) % timesteps
        wall = time.perf_counter() - start
        outbox.put(None)
    if errors:
        raise RuntimeError(f"the server refused {len(errors)} steps, e.g. {errors[0]}")
    ms = np.asarray(rounds) * 1e3
    return {
        "sequences": n,
        "rounds": len(rounds),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "steps_per_s": float(n * len(rounds) / wall),
        "sequences_per_s": float(n * len(rounds) / wall / timesteps),
    }


def run_stream_bench(
    models: list[str | os.PathLike],
    concurrency: list[int],
    threads: int | None = None,
    min_time: float = 1.0,
    progress=None,
) -> dict:
    """Bench a streaming ONNX export (and, when given, the unrolled export of the same checkpoint).

    Args:
        models: one streaming ``.onnx``, optionally one unrolled ``.onnx`` with the same T.
        concurrency: the numbers of concurrent sequences N (``--batch-sizes``).
        threads: intra-op threads of every session (server included).
        min_time: seconds of timed calls per measurement.
        progress: called with one line per measurement.

    Returns:
        a flat report: ``machine``, ``timesteps``, ``step_batch1`` (graph alone), ``graph`` and ``server`` (one row
        per N), and ``unrolled`` (one row per N, when given).

    Raises:
        ModelFileError: not exactly one streaming graph, another file that is not an unrolled ONNX export, or
            different T.
    """
    from ..serving.server import InferenceServer, ServeConfig

    say = progress or (lambda msg: None)
    streams = [m for m in models if is_streaming(m)]
    others = [m for m in models if not is_streaming(m)]
    if len(streams) != 1 or len(others) > 1:
        raise ModelFileError(
            "bench on a streaming graph takes one streaming .onnx and at most one unrolled .onnx "
            f"of the same model; got {', '.join(map(str, models))}"
        )
    runtime = OrtRuntime(streams[0], threads=threads, allow_streaming=True)
    spec = runtime.spec
    unrolled = OrtRuntime(others[0], threads=threads) if others else None
    if unrolled is not None and unrolled.spec.timesteps != spec.timesteps:
        raise ModelFileError(
            f"{others[0]} unrolls T = {unrolled.spec.timesteps}, the streaming graph steps through "
            f"T = {spec.timesteps}; bench exports of the same checkpoint"
        )
    x = np.random.default_rng(0).random((1, *spec.input_shape), dtype=np.float32)
    graph_rows: list[dict] = []
    server_rows: list[dict] = []
    unrolled_rows: list[dict] = []
    step_batch1 = _time_steps(runtime, 1, x, min_time)
    say(f"graph alone, one step of 1 sequence: p50 {step_batch1['p50_ms']:.3f} ms")
    for n in concurrency:
        graph_rows.append(_time_steps(runtime, n, x, min_time))
        if unrolled is not None:
            unrolled_rows.append(time_runtime(unrolled, np.repeat(x, n, axis=0), min_time=min_time))
    config = ServeConfig(
        name="stream", port=0, grpc_port=0, max_batch=max(concurrency), max_sequences=max(concurrency), drain_s=2
    )
    serving = OrtRuntime(streams[0], threads=threads, allow_streaming=True)
    with InferenceServer(serving, config) as srv:
        port = srv.grpc_port
        assert port is not None  # config asks for gRPC (grpc_port 0: a free port, bound once started)
        for n in concurrency:
            row = _serve_steps(port, config.name, n, x, spec.timesteps, min_time)
            server_rows.append(row)
            say(f"server, {n} sequences: {row['steps_per_s']:.0f} steps/s, p50 {row['p50_ms']:.3f} ms per round")
    return {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "model": str(streams[0]),
        "unrolled_model": str(others[0]) if others else None,
        "timesteps": spec.timesteps,
        "threads": threads,
        "graph": graph_rows,
        "server": server_rows,
        "unrolled": unrolled_rows,
        "step_batch1": step_batch1,
    }


def stream_table(report: dict) -> str:
    """One row per N: steps/s and sequences/s through the server, the graph alone, the unrolled graph."""
    T = report["timesteps"]
    b1 = report["step_batch1"]
    lines = [
        (
            f"streaming graph, T = {T}; one step of one sequence, graph alone: p50 {b1['p50_ms']:.3f} ms, "
            f"p90 {b1['p90_ms']:.3f}, p99 {b1['p99_ms']:.3f}"
        ),
        (
            f"{'N seq':>6} {'server steps/s':>15} {'p50 ms/round':>13} {'p99 ms/round':>13} {'server seq/s':>13} "
            f"{'graph steps/s':>14} {'graph seq/s':>12} {'unrolled smp/s':>15}"
        ),
        "-" * 108,
    ]
    unrolled = {r["batch"]: r for r in report["unrolled"]}
    for srv, graph in zip(report["server"], report["graph"]):
        n = srv["sequences"]
        u = f"{unrolled[n]['samples_per_s']:15.1f}" if n in unrolled else f"{'-':>15}"
        lines.append(
            f"{n:6d} {srv['steps_per_s']:15.1f} {srv['p50_ms']:13.3f} {srv['p99_ms']:13.3f} "
            f"{srv['sequences_per_s']:13.1f} {graph['steps_per_s']:14.1f} {graph['steps_per_s'] / T:12.1f} "
            f"{u}"
        )
    return "\n".join(lines)


def write_stream_report(report: dict, out: str | os.PathLike) -> list[Path]:
    """``stream_report.json`` and ``streaming.png`` (samples/s against N: the stream through the server, the
    streaming graph alone, the unrolled graph) in ``out``; returns the paths."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    T = report["timesteps"]
    with atomic_path(out / "stream_report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["sequences"] for r in report["server"]]
    ax.plot(ns, [r["sequences_per_s"] for r in report["server"]], "o-", label="stream through the server")
    ax.plot(ns, [r["steps_per_s"] / T for r in report["graph"]], "s--", label="streaming graph alone")
    if report["unrolled"]:
        ax.plot(
            [r["batch"] for r in report["unrolled"]],
            [r["samples_per_s"] for r in report["unrolled"]],
            "^:",
            label=f"unrolled graph (T = {T} in one call)",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent sequences N (unrolled: batch size)")
    ax.set_ylabel(f"samples/s (a sample = {T} steps)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(out / "streaming.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return [out / "stream_report.json", out / "streaming.png"]
