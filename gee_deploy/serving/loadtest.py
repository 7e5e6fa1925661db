"""A bounded load generator for the server: N clients on keep-alive connections for a fixed time.

Each client posts one JSON infer request after another and checks every answer (status 200, logits of
the right shape); the result is a flat dict of counts, latency percentiles and throughput.
"""
from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np

from ..spec import INPUT_NAME, LOGITS

__all__ = ["load_test"]


def load_test(host: str, port: int, model: str, images: np.ndarray, clients: int = 16, duration_s: float = 20.0,
              max_requests: int = 1_000_000, timeout_s: float = 30.0) -> dict:
    """Hammer ``/v2/models/{model}/infer`` with ``clients`` threads for ``duration_s`` seconds.

    Args:
        host: server host (loopback).
        port: server port.
        model: model name.
        images: float32 [M, C, H, W]; client i sends one sample at a time, cycling from image i.
        clients: concurrent connections.
        duration_s: how long to send.
        max_requests: stop earlier after this many requests in total.
        timeout_s: socket timeout per request.
    """
    bodies = [json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, *img.shape], "datatype": "FP32",
                                      "data": img.ravel().tolist()}],
                          "outputs": [{"name": LOGITS}]}).encode() for img in images]
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    sent = [0]
    stop = time.perf_counter() + duration_s

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        k = i
        try:
            while time.perf_counter() < stop:
                with lock:
                    if sent[0] >= max_requests:
                        return
                    sent[0] += 1
                body = bodies[k % len(bodies)]
                k += clients
                t0 = time.perf_counter()
                try:
                    conn.request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                    ok = resp.status == 200 and json.loads(data)["outputs"][0]["shape"][0] == 1
                    err = None if ok else f"status {resp.status}: {data[:200]!r}"
                except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                    err = f"{type(e).__name__}: {e}"
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
                dt = time.perf_counter() - t0
                with lock:
                    (errors.append(err) if err else latencies.append(dt))
        finally:
            conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
    return {"clients": clients, "duration_s": wall, "requests": len(latencies) + len(errors), "ok": len(latencies),
            "errors": len(errors), "error_examples": errors[:5], "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "throughput_rps": len(latencies) / wall}
