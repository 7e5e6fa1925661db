"""Load test of `gee-deploy serve`: the server in its own process, N keep-alive clients for a fixed time.

    python benchmarks/serving_load.py runs/demo/model.onnx --clients 16 --seconds 20 [--max-batch 32]

Prints one JSON line: requests, errors, client-side p50/p90/p99 latency and throughput, plus the
server's own batch-size histogram from /metrics. Loopback only.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.request

from gee_deploy.serving.loadtest import load_test
from gee_deploy.data import load_test_arrays
from gee_deploy.spec import ModelSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads of the server")
    ap.add_argument("--samples", type=int, default=256, help="distinct test images the clients cycle through")
    args = ap.parse_args()

    info = ModelSpec.from_onnx(args.model)
    images = load_test_arrays(info.dataset, limit=args.samples)[0]
    cmd = [sys.executable, "-m", "gee_deploy.cli", "serve", args.model, "--name", "bench", "--port", "0",
           "--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline()
        port = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if port is None:
            sys.exit(f"server did not start: {line.strip()}")
        port = int(port[1])
        result = load_test("127.0.0.1", port, "bench", images, clients=args.clients, duration_s=args.seconds)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        calls = int(re.search(r"gee_batch_size_count (\d+)", metrics)[1])
        samples = int(re.search(r"gee_batch_size_sum (\d+)", metrics)[1])
        result.update(server_calls=calls, mean_batch=samples / max(calls, 1), max_batch=args.max_batch,
                      max_delay_ms=args.max_delay_ms)
        print(json.dumps(result))
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
