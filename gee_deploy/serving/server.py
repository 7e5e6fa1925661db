"""`gee-deploy serve`: the Open Inference Protocol (KServe v2 REST) over onnxruntime, with dynamic batching.

Endpoints: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/1]``,
``/v2/models/{name}[/versions/1]/ready``, ``POST /v2/models/{name}[/versions/1]/infer`` and ``GET /metrics``
(Prometheus text). Tensors travel as JSON ``data`` or with Triton's binary tensor extension (the
``Inference-Header-Content-Length`` header), which is what ``tritonclient.http`` sends by default.

Concurrent requests are queued and merged into one onnxruntime call of up to ``max_batch`` samples, waiting
at most ``max_delay_ms`` after the first for others to arrive. Bad requests (malformed JSON, wrong shape or
dtype, NaN/Inf, a body over ``max_body_bytes``) get a 4xx with ``{"error": "..."}`` and the server keeps
serving. The standard library's threading HTTP server is enough at this scale and adds no dependency.
"""
from __future__ import annotations

import json
import math
import queue
import re
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from ..errors import InputError
from ..spec import INPUT_NAME, LOGITS, OUTPUT_NAMES, SPIKE_COUNTS
from .runtimes import Runtime, validate_input

__all__ = ["Batcher", "Metrics", "InferenceServer", "RequestError"]

_MODEL_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer)?$")


class RequestError(Exception):
    """A client error: becomes an HTTP 4xx with ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Metrics:
    """Counters and histograms, rendered in the Prometheus text exposition format."""

    LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

    def __init__(self, spiking_layers: list[str]):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}  # (endpoint, status) -> count
        self.latency = [0] * (len(self.LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.batches = [0] * (len(self.BATCH_BUCKETS) + 1)
        self.batch_sum = 0
        self.samples = 0
        self.spikes = dict.fromkeys(spiking_layers, 0.0)

    @staticmethod
    def _bucket(bounds, value) -> int:
        return next((i for i, b in enumerate(bounds) if value <= b), len(bounds))

    def observe_request(self, endpoint: str, status: int, seconds: float | None) -> None:
        with self.lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            if seconds is not None:
                self.latency[self._bucket(self.LATENCY_BUCKETS, seconds)] += 1
                self.latency_sum += seconds

    def observe_batch(self, size: int, spike_counts: np.ndarray) -> None:
        totals = spike_counts.sum(0)
        with self.lock:
            self.batches[self._bucket(self.BATCH_BUCKETS, size)] += 1
            self.batch_sum += size
            self.samples += size
            for name, v in zip(self.spikes, totals.tolist()):
                self.spikes[name] += v

    @staticmethod
    def _histogram(name: str, bounds, counts, total) -> list[str]:
        lines, cum = [], 0
        for b, c in zip(bounds, counts):
            cum += c
            lines.append(f'{name}_bucket{{le="{b}"}} {cum}')
        cum += counts[-1]
        return lines + [f'{name}_bucket{{le="+Inf"}} {cum}', f"{name}_sum {total}", f"{name}_count {cum}"]

    def render(self, model: str) -> str:
        with self.lock:
            out = ["# HELP gee_requests_total HTTP requests by endpoint and status code.",
                   "# TYPE gee_requests_total counter"]
            out += [f'gee_requests_total{{endpoint="{e}",code="{c}"}} {n}' for (e, c), n in sorted(self.requests.items())]
            errors = sum(n for (e, c), n in self.requests.items() if c >= 400)
            out += ["# HELP gee_request_errors_total Requests answered with a 4xx or 5xx.",
                    "# TYPE gee_request_errors_total counter", f"gee_request_errors_total {errors}",
                    "# HELP gee_inference_duration_seconds Time from request to response of successful infers.",
                    "# TYPE gee_inference_duration_seconds histogram"]
            out += self._histogram("gee_inference_duration_seconds", self.LATENCY_BUCKETS, self.latency,
                                   self.latency_sum)
            out += ["# HELP gee_batch_size Samples per onnxruntime call after dynamic batching.",
                    "# TYPE gee_batch_size histogram"]
            out += self._histogram("gee_batch_size", self.BATCH_BUCKETS, self.batches, self.batch_sum)
            out += ["# HELP gee_samples_total Samples inferred.", "# TYPE gee_samples_total counter",
                    f'gee_samples_total{{model="{model}"}} {self.samples}',
                    "# HELP gee_spikes_total Spikes emitted per spiking layer over all samples.",
                    "# TYPE gee_spikes_total counter"]
            out += [f'gee_spikes_total{{model="{model}",layer="{k}"}} {v:.0f}' for k, v in self.spikes.items()]
        return "\n".join(out) + "\n"


class Batcher:
    """Merges concurrent requests into one runtime call of at most ``max_batch`` samples.

    The first queued request opens a window of ``max_delay_ms``; requests that arrive in it join the batch
    while it has room. One worker thread owns the runtime, so calls never overlap.
    """

    def __init__(self, runtime: Runtime, max_batch: int = 32, max_delay_ms: float = 2.0,
                 metrics: Metrics | None = None):
        if max_batch < 1 or max_delay_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_delay_ms >= 0, got {max_batch}, {max_delay_ms}")
        self.runtime, self.max_batch, self.max_delay = runtime, max_batch, max_delay_ms / 1e3
        self.metrics = metrics
        self.queue: queue.Queue = queue.Queue()
        self._held = None
        self._worker = threading.Thread(target=self._loop, name="gee-batcher", daemon=True)
        self._worker.start()

    def submit(self, x: np.ndarray) -> Future:
        """Queue ``x`` [n, C, H, W] (already validated); the future resolves to (logits, spike_counts)."""
        fut: Future = Future()
        self.queue.put((x, fut))
        return fut

    def close(self) -> None:
        self.queue.put(None)
        self._worker.join(timeout=5)

    def _next_batch(self) -> list | None:
        first = self._held if self._held is not None else self.queue.get()
        self._held = None
        if first is None:
            return None
        items, size = [first], len(first[0])
        deadline = time.perf_counter() + self.max_delay
        while size < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None or size + len(item[0]) > self.max_batch:
                self._held = item  # runs first in the next batch (or stops the loop)
                break
            items.append(item)
            size += len(item[0])
        return items

    def _loop(self) -> None:
        while True:
            items = self._next_batch()
            if items is None:
                return
            try:
                x = items[0][0] if len(items) == 1 else np.concatenate([x for x, _ in items])
                logits, spikes = self.runtime.run(x)
                if self.metrics is not None:
                    self.metrics.observe_batch(len(x), spikes)
                start = 0
                for xi, fut in items:
                    fut.set_result((logits[start:start + len(xi)], spikes[start:start + len(xi)]))
                    start += len(xi)
            except Exception as e:  # a runtime failure fails every request of the batch, not the server
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)


def _decode_input(body: bytes, header_length: int | None, info) -> tuple[np.ndarray, dict]:
    """Parse an infer request body into a validated float32 input and the request JSON."""
    json_part = body if header_length is None else body[:header_length]
    try:
        req = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or len(req["inputs"]) != 1:
        raise RequestError(400, "request must be a JSON object with exactly one tensor in 'inputs'")
    t = req["inputs"][0]
    if not isinstance(t, dict) or t.get("name") != INPUT_NAME:
        raise RequestError(400, "the input tensor must be named 'input'")
    if t.get("datatype") != "FP32":
        raise RequestError(400, f"input datatype must be FP32, got {t.get('datatype')!r}")
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(400, f"input shape must be a list of non-negative integers, got {shape!r}")
    want = [*info.input_shape]
    if len(shape) != 4 or shape[1:] != want or shape[0] < 1:
        raise RequestError(400, f"input shape must be [N, {', '.join(map(str, want))}] with N >= 1, got {shape}")
    count = math.prod(shape)  # Python ints: a hostile shape cannot overflow
    params = t.get("parameters") or {}
    if "binary_data_size" in params:
        if header_length is None:
            raise RequestError(400, "binary_data_size given without an Inference-Header-Content-Length header")
        raw = body[header_length:]
        if params["binary_data_size"] != len(raw) or len(raw) != 4 * count:
            raise RequestError(400, f"binary input holds {len(raw)} bytes; shape {shape} FP32 needs {4 * count}")
        x = np.frombuffer(raw, dtype="<f4").reshape(shape)
    else:
        data = t.get("data")
        if not isinstance(data, list):
            raise RequestError(400, "input has neither 'data' nor binary data")
        try:
            x = np.asarray(data, dtype=np.float32)
        except (ValueError, TypeError):
            raise RequestError(400, "input 'data' must be a flat or nested list of numbers") from None
        if x.size != count:
            raise RequestError(400, f"input 'data' holds {x.size} values; shape {shape} needs {count}")
        x = x.reshape(shape)
    try:
        return validate_input(np.ascontiguousarray(x, dtype=np.float32), info), req
    except InputError as e:
        raise RequestError(400, str(e)) from None


def _requested_outputs(req: dict) -> list[tuple[str, bool]]:
    """(output name, as binary) pairs the request asks for; all outputs when it names none."""
    default_binary = bool((req.get("parameters") or {}).get("binary_data_output", False))
    asked = req.get("outputs")
    if asked is None:
        return [(name, default_binary) for name in OUTPUT_NAMES]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise RequestError(400, "'outputs' must be a list of objects")
    out = []
    for o in asked:
        if o.get("name") not in OUTPUT_NAMES:
            raise RequestError(400, f"unknown output {o.get('name')!r}; this model has {', '.join(OUTPUT_NAMES)}")
        out.append((o["name"], bool((o.get("parameters") or {}).get("binary_data", default_binary))))
    return out


class InferenceServer:
    """A KServe v2 REST server for one model.

    Args:
        runtime: what answers (an :class:`OrtRuntime` for ``gee-deploy serve``).
        name: the model name in URLs.
        host: bind address; loopback unless told otherwise.
        port: TCP port; 0 picks a free one (see ``.port``).
        max_batch: largest dynamic batch in samples.
        max_delay_ms: how long the first request of a batch waits for company.
        max_body_bytes: larger request bodies get 413.
        timeout_s: seconds a request may wait for its result before a 503.
    """

    def __init__(self, runtime: Runtime, name: str = "gee", host: str = "127.0.0.1", port: int = 8000,
                 max_batch: int = 32, max_delay_ms: float = 2.0, max_body_bytes: int = 16 << 20,
                 timeout_s: float = 30.0):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"model name {name!r} must be letters, digits, '_', '.', '-'")
        self.runtime, self.name, self.max_body, self.timeout = runtime, name, max_body_bytes, timeout_s
        self.metrics = Metrics(runtime.spec.spiking_layers)
        self.batcher = Batcher(runtime, max_batch, max_delay_ms, self.metrics)
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.httpd.server_address[0]}:{self.port}"

    def metadata(self) -> dict:
        info = self.runtime.spec
        return {"name": self.name, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *info.input_shape]}],
                "outputs": [{"name": LOGITS, "datatype": "FP32", "shape": [-1, len(info.class_names)]},
                            {"name": SPIKE_COUNTS, "datatype": "FP32", "shape": [-1, len(info.spiking_layers)]}],
                "parameters": {"timesteps": info.timesteps, "class_names": list(info.class_names),
                               "spiking_layers": list(info.spiking_layers), "model_name": info.model_name}}

    def infer(self, body: bytes, header_length: int | None) -> tuple[bytes, dict]:
        """Answer one infer request: (response body, extra headers)."""
        x, req = _decode_input(body, header_length, self.runtime.spec)
        outputs = _requested_outputs(req)
        try:
            logits, spikes = self.batcher.submit(x).result(timeout=self.timeout)
        except TimeoutError:
            raise RequestError(503, f"inference did not finish within {self.timeout:g} s") from None
        values = {LOGITS: logits, SPIKE_COUNTS: spikes}
        tensors, blobs = [], []
        for name, binary in outputs:
            arr = np.ascontiguousarray(values[name], dtype="<f4")
            t = {"name": name, "datatype": "FP32", "shape": list(arr.shape)}
            if binary:
                blobs.append(arr.tobytes())
                t["parameters"] = {"binary_data_size": len(blobs[-1])}
            else:
                t["data"] = arr.ravel().tolist()
            tensors.append(t)
        head = {"model_name": self.name, "model_version": "1", "outputs": tensors}
        if "id" in req:
            head["id"] = req["id"]
        head_bytes = json.dumps(head).encode()
        if not blobs:
            return head_bytes, {"Content-Type": "application/json"}
        return head_bytes + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                              "Inference-Header-Content-Length": str(len(head_bytes))}

    def start(self) -> InferenceServer:
        """Serve in a background thread (tests, notebooks); ``close()`` stops it."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="gee-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()
        self.batcher.close()

    def __enter__(self) -> InferenceServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _handler(server: InferenceServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as tritonclient's connection pool expects
        server_version = "gee-deploy"
        # Headers and body leave in one segment: with Nagle on and two writes, the client's delayed ACK
        # added 40 ms to every response on loopback.
        disable_nagle_algorithm = True
        wbufsize = 1 << 16  # flushed by BaseHTTPRequestHandler after each request

        def log_message(self, fmt, *args) -> None:  # access logs would cost more than the inference
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            headers = headers or ({"Content-Type": "application/json"} if body else {})
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj).encode())

        def _route(self, method: str) -> tuple[str, callable]:
            path = self.path.split("?", 1)[0]
            if method == "GET" and path == "/metrics":
                return "metrics", lambda: self._send(200, server.metrics.render(server.name).encode(),
                                                     {"Content-Type": "text/plain; version=0.0.4"})
            if method == "GET" and path in ("/v2", "/v2/"):
                return "server", lambda: self._json(200, {"name": "gee-deploy", "version": "1",
                                                          "extensions": ["binary_tensor_data"]})
            if method == "GET" and path in ("/v2/health/live", "/v2/health/ready"):
                key = path.rsplit("/", 1)[1]
                return "health", lambda: self._json(200, {key: True})
            m = _MODEL_PATH.match(path)
            if m is None:
                raise RequestError(404, f"no endpoint {path}")
            if m["name"] != server.name:
                raise RequestError(404, f"unknown model {m['name']!r}; this server has {server.name!r}")
            if m["version"] not in (None, "1"):
                raise RequestError(404, f"model {server.name!r} has only version 1")
            rest = m["rest"] or ""
            if (method == "POST") != (rest == "/infer"):
                raise RequestError(405, f"{method} is not allowed on {path}")
            if rest == "/ready":
                return "model_ready", lambda: self._json(200, {"name": server.name, "ready": True})
            if rest == "":
                return "model", lambda: self._json(200, server.metadata())
            return "infer", self._infer

        def _infer(self) -> None:
            start = time.perf_counter()
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                self.close_connection = True
                raise RequestError(411, "chunked bodies are not supported; send Content-Length")
            if self.headers.get("Content-Encoding", "identity") not in ("identity", ""):
                self.close_connection = True
                raise RequestError(415, "compressed request bodies are not supported")
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.close_connection = True
                raise RequestError(411, "a Content-Length header is required") from None
            if length < 0:
                self.close_connection = True
                raise RequestError(400, f"Content-Length {length} is negative")
            if length > server.max_body:
                self._discard(length)
                raise RequestError(413, f"request body of {length} bytes exceeds the limit of {server.max_body}")
            body = self.rfile.read(length)
            header_length = self.headers.get("Inference-Header-Content-Length")
            if header_length is not None:
                try:
                    header_length = int(header_length)
                except ValueError:
                    raise RequestError(400, "Inference-Header-Content-Length must be an integer") from None
                if not 0 < header_length <= len(body):
                    raise RequestError(400, f"Inference-Header-Content-Length {header_length} does not fit "
                                            f"a body of {len(body)} bytes")
            payload, headers = server.infer(body, header_length)
            self._send(200, payload, headers)
            return time.perf_counter() - start

        def _discard(self, length: int) -> None:
            """Read and drop a refused body (closing on unread data would reset the connection before the
            client reads the 413), up to 4x the limit; beyond that just close."""
            self.close_connection = True
            left = length if length <= 4 * server.max_body else 0
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)

        def _handle(self, method: str) -> None:
            endpoint, status, seconds = "unknown", 500, None
            try:
                endpoint, action = self._route(method)
                seconds = action()
                status = 200
            except RequestError as e:
                status = e.status
                if method == "POST" and status in (404, 405):  # the body was not read: drop the connection
                    self.close_connection = True
                self._json(status, {"error": str(e)})
            except Exception as e:  # a bug must not kill the server; the client learns what happened
                self.close_connection = True
                self._json(500, {"error": f"internal error: {type(e).__name__}: {e}"})
            finally:
                server.metrics.observe_request(endpoint, status, seconds if status == 200 else None)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return Handler
