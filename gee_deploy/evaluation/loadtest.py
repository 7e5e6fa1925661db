"""A bounded load generator for the server: N clients on keep-alive connections (HTTP) or channels (gRPC) for
a fixed time.

Each client sends one single-sample infer request after another and checks every answer (success, logits
[1, classes]). An answer that never comes (a reset, a closed connection, a timeout) or is not a success is an
error. A connection the server refuses because it has stopped listening (after it announced the end with
``Connection: close``, or gRPC UNAVAILABLE while it shuts down, not for load) is counted as ``refused`` and ends that
client: the request was never taken, which is what a draining server is allowed to do.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import numpy as np

from ..spec import INPUT_NAME, LOGITS

__all__ = ["load_test"]

_LOAD_ANSWERS = ("the limit is", "did not finish within")  # ServerBusy's and InferenceTimeout's messages


def _http_client(host: str, port: int, model: str, images: np.ndarray, timeout_s: float):
    bodies = [
        json.dumps(
            {
                "inputs": [
                    {"name": INPUT_NAME, "shape": [1, *img.shape], "datatype": "FP32", "data": img.ravel().tolist()}
                ],
                "outputs": [{"name": LOGITS}],
            }
        ).encode()
        for img in images
    ]
    path = f"/v2/models/{model}/infer"

    def connect():
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        conn.connect()  # a refusal shows here, before a request is written
        # As urllib3 and tritonclient do: without it a body sent after its headers waits for the server's
        # delayed ACK (40 ms on Linux), which would measure the client, not the server.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def send(conn, k: int):
        """(conn, None) on success, (conn, error) on failure, raises ConnectionRefusedError when refused."""
        try:
            if conn is None or conn.sock is None:  # first request, or the server said Connection: close
                conn = connect()
            conn.request("POST", path, bodies[k % len(bodies)], {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            ok = resp.status == 200 and json.loads(data)["outputs"][0]["shape"][0] == 1
            return conn, None if ok else f"status {resp.status}: {data[:200]!r}"
        except ConnectionRefusedError:
            raise
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            if conn is not None:
                conn.close()
            return None, f"{type(e).__name__}: {e}"

    return send, lambda conn: conn is not None and conn.close()


def _grpc_client(host: str, port: int, model: str, images: np.ndarray, timeout_s: float):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    requests = []
    for img in images:
        req = service_pb2.ModelInferRequest(model_name=model)
        t = req.inputs.add(name=INPUT_NAME, datatype="FP32")
        t.shape.extend([1, *img.shape])
        req.outputs.add(name=LOGITS)
        req.raw_input_contents.append(np.ascontiguousarray(img, dtype="<f4").tobytes())
        requests.append(req)

    def send(channel, k: int):
        if channel is None:
            channel = grpc.insecure_channel(f"{host}:{port}")
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            resp = stub.ModelInfer(requests[k % len(requests)], timeout=timeout_s)
            ok = list(resp.outputs[0].shape)[0] == 1
            return channel, None if ok else f"bad answer: {resp.outputs[0]}"
        except grpc.RpcError as e:
            # UNAVAILABLE is also how the service answers load (concurrency limit, batch timeout): an error here
            if e.code() == grpc.StatusCode.UNAVAILABLE and not any(m in (e.details() or "") for m in _LOAD_ANSWERS):
                channel.close()
                raise ConnectionRefusedError(str(e.details())) from None
            return channel, f"{e.code().name}: {e.details()}"

    return send, lambda channel: channel is not None and channel.close()


def load_test(
    host: str,
    port: int,
    model: str,
    images: np.ndarray,
    clients: int = 16,
    duration_s: float = 20.0,
    max_requests: int = 1_000_000,
    timeout_s: float = 30.0,
    protocol: str = "http",
) -> dict:
    """Send infer requests with ``clients`` threads for ``duration_s`` seconds; return counts and latencies.

    Args:
        host: server host (loopback).
        port: server port (the gRPC port for ``protocol="grpc"``).
        model: model name.
        images: float32 [M, C, H, W]; client i sends one sample at a time, cycling from image i.
        clients: concurrent connections.
        duration_s: how long to send.
        max_requests: stop earlier after this many requests in total.
        timeout_s: per-request timeout.
        protocol: "http" (JSON bodies, keep-alive) or "grpc" (raw tensors, one channel per client).

    Returns:
        requests, ok, errors (failed or cut requests), refused (connections refused, clients that stopped),
        error_examples, p50/p90/p99 latency in ms of the successful requests, throughput_rps (ok per second).
    """
    make = {"http": _http_client, "grpc": _grpc_client}[protocol]
    send, close = make(host, port, model, images, timeout_s)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    refused = [0]
    sent = [0]
    stop = time.perf_counter() + duration_s

    def client(i: int) -> None:
        conn, k = None, i
        try:
            while time.perf_counter() < stop:
                with lock:
                    if sent[0] >= max_requests:
                        return
                    sent[0] += 1
                t0 = time.perf_counter()
                try:
                    conn, err = send(conn, k)
                except ConnectionRefusedError:
                    with lock:
                        sent[0] -= 1
                        refused[0] += 1
                    return
                dt = time.perf_counter() - t0
                k += clients
                with lock:
                    (errors.append(err) if err else latencies.append(dt))
        finally:
            close(conn)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
    return {
        "protocol": protocol,
        "clients": clients,
        "duration_s": wall,
        "requests": len(latencies) + len(errors),
        "ok": len(latencies),
        "errors": len(errors),
        "refused": refused[0],
        "error_examples": errors[:5],
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput_rps": len(latencies) / wall,
    }
