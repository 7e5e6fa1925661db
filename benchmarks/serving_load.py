"""Load test of `gee-deploy serve`: the server in its own process, N keep-alive clients for a fixed time.

    python benchmarks/serving_load.py runs/demo/model.onnx --clients 16 --seconds 20 [--grpc]
        [--old-tree /path/to/a/checkout/of/main --rounds 2] [--sigterm [--sigterm-runs 8]] [--stalled 200]

Prints one JSON line per run: protocol, requests, errors, refused, client-side p50/p90/p99 latency and
throughput, plus the server's own batch-size histogram from /metrics. With ``--old-tree`` the server of that
checkout (same model, same options) runs interleaved with this one, round after round, and a last line gives
this server's throughput and CPU per request over the old one's (medians of the rounds): on a shared machine
only ratios measured in one run mean anything, and CPU per request does not depend on the scheduler's share.
``--sigterm`` sends SIGTERM halfway through a load run and reports cut requests and the exit code
(``--sigterm-runs`` times per protocol, with a summary: whether a server drains cleanly is a matter of races, so
one clean run proves little); ``--stalled N`` opens N half-sent requests and reports how fast /v2/health/ready
answers and when the stalled connections are released. Loopback only; every loop is bounded.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from gee_deploy.data import load_test_arrays
from gee_deploy.evaluation.loadtest import load_test
from gee_deploy.serving.server import parse_ready_line
from gee_deploy.spec import ModelSpec

from _timing import process_cpu_seconds

HERE = Path(__file__).resolve().parents[1]


def start_server(tree: Path, model: str, args, grpc: bool, *extra: str) -> tuple[subprocess.Popen, int, int | None]:
    """`gee-deploy serve` of checkout ``tree`` on free ports; returns (process, http port, grpc port)."""
    cmd = [sys.executable, "-m", "gee_deploy.cli", "serve", model, "--name", "bench", "--port", "0",
           "--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms), *extra]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if grpc:
        cmd += ["--grpc-port", "0"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    ports = parse_ready_line(line)
    if ports is None:
        proc.kill()
        sys.exit(f"server in {tree} did not start: {line.strip()}")
    return proc, *ports


def server_batches(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    calls = float(re.search(r"^gee_batch_size_count (\S+)$", text, re.M)[1])
    samples = float(re.search(r"^gee_batch_size_sum (\S+)$", text, re.M)[1])
    return {"server_calls": int(calls), "mean_batch": samples / max(calls, 1)}


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def load_run(tree: Path, label: str, protocol: str, model: str, images, args) -> dict:
    proc, port, grpc_port = start_server(tree, model, args, protocol == "grpc")
    try:
        cpu0 = process_cpu_seconds(proc.pid)
        result = load_test("127.0.0.1", grpc_port if protocol == "grpc" else port, "bench", images,
                           clients=args.clients, duration_s=args.seconds, protocol=protocol)
        # The server's CPU per answered request: unlike requests/s, it does not depend on how much of a
        # shared machine the scheduler gave the server during the run.
        cpu_ms = (process_cpu_seconds(proc.pid) - cpu0) / max(result["ok"], 1) * 1e3
        result.update(server=label, server_cpu_ms_per_request=cpu_ms, **server_batches(port),
                      max_batch=args.max_batch, max_delay_ms=args.max_delay_ms)
    finally:
        stop(proc)
    print(json.dumps(result), flush=True)
    return result


def sigterm_run(protocol: str, model: str, images, args) -> dict:
    """SIGTERM halfway through a load run: requests cut (must be 0), clients refused, exit code (must be 0)."""
    proc, port, grpc_port = start_server(HERE, model, args, True)
    out: dict = {}
    loader = threading.Thread(target=lambda: out.update(load_test(
        "127.0.0.1", grpc_port if protocol == "grpc" else port, "bench", images, clients=args.clients,
        duration_s=args.seconds, protocol=protocol)))
    loader.start()
    time.sleep(args.seconds / 2)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    exit_s = time.perf_counter() - t0
    loader.join(timeout=args.seconds + 60)
    result = {"test": "sigterm", "protocol": protocol, "exit_code": code, "exit_after_s": exit_s,
              "ok": out["ok"], "errors": out["errors"], "refused": out["refused"],
              "error_examples": out["error_examples"], "traceback": "Traceback" in proc.stderr.read()}
    print(json.dumps(result), flush=True)
    return result


def _ready_ms(port: int) -> float:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/v2/health/ready")
    assert conn.getresponse().status == 200
    conn.close()
    return (time.perf_counter() - t0) * 1e3


def stalled_run(n: int, model: str, args) -> dict:
    """n connections that send half a request and wait: /v2/health/ready latency while they hang, and the
    time until the server has released all of them (its request timeout)."""
    proc, port, _ = start_server(HERE, model, args, False, "--request-timeout-s", str(args.request_timeout_s))
    try:
        socks = []
        head = b"POST /v2/models/bench/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n"
        t_open = time.perf_counter()
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=args.request_timeout_s + 30)
            s.sendall(head + b"{" * 100 if i % 2 else head[:30])  # half a body / half the headers
            socks.append(s)
        ready = sorted(_ready_ms(port) for _ in range(20))
        released = []
        for s in socks:  # recv returns when the server answers 408 and closes; bounded by the socket timeout
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            released.append(data.startswith(b"HTTP/1.1 408"))
            s.close()
        result = {"test": "stalled", "connections": n, "ready_ms_median": statistics.median(ready),
                  "ready_ms_max": ready[-1], "released_with_408": sum(released),
                  "all_released_after_s": time.perf_counter() - t_open, "request_timeout_s": args.request_timeout_s}
    finally:
        stop(proc)
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads of the server")
    ap.add_argument("--samples", type=int, default=256, help="distinct test images the clients cycle through")
    ap.add_argument("--grpc", action="store_true", help="also load this server over gRPC")
    ap.add_argument("--old-tree", type=Path, default=None, help="a checkout whose server to compare with (HTTP)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every configuration (0: none)")
    ap.add_argument("--sigterm", action="store_true", help="SIGTERM halfway through a load run (HTTP and gRPC)")
    ap.add_argument("--sigterm-runs", type=int, default=1, help="--sigterm runs per protocol (a summary line when > 1)")
    ap.add_argument("--stalled", type=int, default=0, help="stalled connections to open (0: skip)")
    ap.add_argument("--request-timeout-s", type=float, default=3.0, help="server request timeout for --stalled")
    args = ap.parse_args()

    info = ModelSpec.from_onnx(args.model)
    images = load_test_arrays(info.dataset, limit=args.samples)[0]
    runs = [("new", HERE, "http")] + ([("new", HERE, "grpc")] if args.grpc else [])
    if args.old_tree is not None:
        runs.insert(0, ("old", args.old_tree.resolve(), "http"))
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for label, tree, protocol in (runs if r % 2 == 0 else runs[::-1]):  # alternate the order against drift
            results.setdefault((label, protocol), []).append(load_run(tree, label, protocol, args.model, images, args))
    if args.old_tree is not None and args.rounds > 0:
        old = statistics.median(x["throughput_rps"] for x in results[("old", "http")])
        old_cpu = statistics.median(x["server_cpu_ms_per_request"] for x in results[("old", "http")])
        summary = {f"{label}_{protocol}": {"rps_median": statistics.median(x["throughput_rps"] for x in rs),
                                           "ratio_to_old_http": statistics.median(x["throughput_rps"] for x in rs) / old,
                                           "cpu_ms_per_request_median": statistics.median(
                                               x["server_cpu_ms_per_request"] for x in rs),
                                           "cpu_ratio_to_old_http": statistics.median(
                                               x["server_cpu_ms_per_request"] for x in rs) / old_cpu,
                                           "errors": sum(x["errors"] for x in rs),
                                           "refused": sum(x["refused"] for x in rs)}
                   for (label, protocol), rs in results.items()}
        print(json.dumps({"summary": summary, "rounds": args.rounds, "clients": args.clients,
                          "seconds": args.seconds}), flush=True)
    if args.sigterm:
        for protocol in ("http", "grpc"):
            runs = [sigterm_run(protocol, args.model, images, args) for _ in range(args.sigterm_runs)]
            if len(runs) > 1:
                print(json.dumps({"test": "sigterm_summary", "protocol": protocol, "runs": len(runs),
                                  "runs_with_errors": sum(r["errors"] > 0 for r in runs),
                                  "errors": sum(r["errors"] for r in runs),
                                  "exit_codes": sorted({r["exit_code"] for r in runs}),
                                  "exit_after_s_max": max(r["exit_after_s"] for r in runs)}), flush=True)
    if args.stalled:
        stalled_run(args.stalled, args.model, args)


if __name__ == "__main__":
    main()
