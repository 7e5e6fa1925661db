"""What the server counts: Prometheus metrics (``prometheus_client``) and Triton's statistics extension.

Each server has its own :class:`prometheus_client.CollectorRegistry`, so several servers in one process
(tests, notebooks) do not share counters. Metric names:

* ``gee_requests_total{protocol, endpoint, code}``: requests by protocol (http, grpc), endpoint and status
  (HTTP status code; gRPC status name).
* ``gee_request_errors_total{protocol}``: requests answered with a 4xx/5xx or a non-OK gRPC status.
* ``gee_inference_duration_seconds{protocol}``: histogram, request to response of successful inferences.
* ``gee_inflight_requests``: inference requests admitted and not yet answered (the concurrency limit's count).
* ``gee_batch_size``: histogram, samples per runtime call after dynamic batching.
* ``gee_samples_total{model}``, ``gee_spikes_total{model, layer}``: samples inferred and spikes each spiking
  layer emitted over them (read from the graph's own ``spike_counts`` output).
* streaming graphs (Triton's sequence extension): ``gee_sequences_live`` (gauge), ``gee_sequences_started_total``,
  ``gee_sequences_ended_total`` (by ``sequence_end``) and ``gee_sequences_expired_total`` (idle past the timeout).

:class:`Statistics` holds the cumulative counts and durations of Triton's statistics extension
(``GET /v2/models/{name}/stats``, gRPC ``ModelStatistics``), in the JSON form of Triton's ``ModelStatistics``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "Statistics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The Prometheus side. Thread-safe: the event loop and the batcher's worker thread both write.

    Args:
        model: the served model's name (a label of the sample and spike counters).
        spiking_layers: names of the ``spike_counts`` columns, in order.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str, spiking_layers):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "gee_requests", "Requests by protocol, endpoint and status.", ["protocol", "endpoint", "code"], registry=r
        )
        self.errors = Counter(
            "gee_request_errors", "Requests answered with a 4xx/5xx or a non-OK gRPC status.", ["protocol"], registry=r
        )
        self.latency = Histogram(
            "gee_inference_duration_seconds",
            "Request to response of successful inferences.",
            ["protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("gee_inflight_requests", "Inference requests admitted and not yet answered.", registry=r)
        self.batch = Histogram(
            "gee_batch_size", "Samples per runtime call after dynamic batching.", buckets=BATCH_BUCKETS, registry=r
        )
        self.samples = Counter("gee_samples", "Samples inferred.", ["model"], registry=r).labels(model)
        spikes = Counter(
            "gee_spikes", "Spikes emitted per spiking layer over all samples.", ["model", "layer"], registry=r
        )
        self.spikes = [spikes.labels(model, layer) for layer in spiking_layers]
        self.sequences_live = Gauge("gee_sequences_live", "Sequences whose state the server holds.", registry=r)
        self.sequences_started = Counter(
            "gee_sequences_started", "Sequences started (sequence_start steps run).", registry=r
        )
        self.sequences_ended = Counter("gee_sequences_ended", "Sequences ended by sequence_end.", registry=r)
        self.sequences_expired = Counter(
            "gee_sequences_expired", "Sequences dropped after the idle timeout.", registry=r
        )
        self._children: dict[tuple, tuple] = {}

    def observe_request(
        self, protocol: str, endpoint: str, code, seconds: float | None = None, error: bool = False
    ) -> None:
        """One answered request; ``seconds`` only for successful inferences."""
        key = (protocol, endpoint, code)
        child = self._children.get(key)
        if child is None:  # labels() costs a lock and a tuple check per call: resolve each series once
            child = self._children[key] = (
                self.requests.labels(protocol, endpoint, str(code)),
                self.errors.labels(protocol),
                self.latency.labels(protocol),
            )
        child[0].inc()
        if error:
            child[1].inc()
        if seconds is not None:
            child[2].observe(seconds)

    def observe_batch(self, size: int, spike_counts: np.ndarray) -> None:
        """One runtime call of ``size`` samples; ``spike_counts`` [size, L]."""
        self.batch.observe(size)
        self.samples.inc(size)
        for child, total in zip(self.spikes, spike_counts.sum(0).tolist()):
            child.inc(total)

    def render(self) -> bytes:
        """The Prometheus text exposition of this server's registry."""
        return generate_latest(self.registry)


class _Duration:
    __slots__ = ("count", "ns")

    def __init__(self):
        self.count, self.ns = 0, 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


class Statistics:
    """Cumulative per-model counts and durations of Triton's statistics extension. Thread-safe.

    Per request (successful): ``queue`` is the wait in the batcher, ``compute_input`` the decoding and
    validation of the request, ``compute_infer`` the runtime call of its batch, ``compute_output`` the
    encoding of the response; ``success`` is the whole request. Per runtime call (``batch_stats``, by batch
    size): ``compute_infer``. ``inference_count`` counts samples, ``execution_count`` runtime calls.
    """

    _PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inference_count = self.execution_count = 0
        self.last_inference_ms = 0
        self.phases = {k: _Duration() for k in self._PHASES}
        self.batches: dict[int, _Duration] = {}

    def observe_execution(self, size: int, seconds: float) -> None:
        with self._lock:
            self.execution_count += 1
            self.inference_count += size
            self.last_inference_ms = int(time.time() * 1e3)
            self.batches.setdefault(size, _Duration()).add(seconds)

    def observe_success(self, total_s: float, input_s: float, queue_s: float, infer_s: float, output_s: float) -> None:
        with self._lock:
            p = self.phases
            p["success"].add(total_s)
            p["compute_input"].add(input_s)
            p["queue"].add(queue_s)
            p["compute_infer"].add(infer_s)
            p["compute_output"].add(output_s)

    def observe_failure(self, total_s: float) -> None:
        with self._lock:
            self.phases["fail"].add(total_s)

    def as_dict(self, name: str, version: str) -> dict:
        """One entry of ``model_stats`` (Triton's ``ModelStatistics`` message, JSON field names)."""
        with self._lock:
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {k: d.as_dict() for k, d in self.phases.items()},
                "batch_stats": [
                    {"batch_size": size, "compute_infer": d.as_dict()} for size, d in sorted(self.batches.items())
                ],
            }
