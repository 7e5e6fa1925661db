"""Dynamic batching: concurrent requests merged into one runtime call, on one thread that owns the session.

The first queued request opens a window of ``max_delay_ms``; requests that arrive in it join the batch while
it has room (``max_batch`` samples). One worker thread owns the runtime, so onnxruntime calls never overlap
(one session, its intra-op threads sized for the machine, no oversubscription). HTTP and gRPC share one
batcher: both submit and wait on the future.

Steps of a streaming graph (one timestep of N sequences, with their membranes) batch the same way: the
membranes of the requests are concatenated per state tensor, the batch runs as one :meth:`Runtime.step`, and
each request gets its rows of the outputs and of the new membranes back.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import NamedTuple

import numpy as np

from .runtimes import Runtime

__all__ = ["Batcher", "BatchResult"]


class BatchResult(NamedTuple):
    """One request's share of a batch: its rows of the outputs and where its time went."""

    logits: np.ndarray  # [n, classes]
    spike_counts: np.ndarray  # [n, L]
    queue_s: float  # from submit to the start of the runtime call
    compute_s: float  # the runtime call of the whole batch
    batch_size: int  # samples in that call
    states: dict | None = None  # streaming: v_in.<lif> -> [n, ...], the membranes after this step
    summary: dict | None = None  # streaming: the sequence's running summary, added by the service


class Batcher:
    """Merges concurrent requests into one runtime call of at most ``max_batch`` samples.

    Args:
        runtime: what runs the batches; only the worker thread calls it.
        max_batch: largest batch in samples (a request larger than this runs alone).
        max_delay_ms: how long the first request of a batch waits for company.
        on_batch: called on the worker thread after each call with (batch size, seconds, spike_counts [n, L]).

    Raises:
        ValueError: max_batch < 1 or max_delay_ms < 0.
    """

    def __init__(
        self,
        runtime: Runtime,
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
        on_batch: Callable[[int, float, np.ndarray], None] | None = None,
    ):
        if max_batch < 1 or max_delay_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_delay_ms >= 0, got {max_batch}, {max_delay_ms}")
        self.runtime, self.max_batch, self.max_delay = runtime, max_batch, max_delay_ms / 1e3
        self.on_batch = on_batch
        self.queue: queue.Queue = queue.Queue()
        self._held = None
        self._worker = threading.Thread(target=self._loop, name="gee-batcher", daemon=True)
        self._worker.start()

    def submit(self, x: np.ndarray, states: dict[str, np.ndarray] | None = None) -> Future:
        """Queue ``x`` [n, C, H, W] (already validated), with a streaming graph's membranes ``states``
        (``v_in.<lif>`` -> [n, ...]); the future resolves to a :class:`BatchResult`."""
        fut: Future = Future()
        self.queue.put((x, fut, time.perf_counter(), states))
        return fut

    def close(self, timeout_s: float = 5.0) -> None:
        """Finish what is queued, then stop the worker."""
        self.queue.put(None)
        self._worker.join(timeout=timeout_s)

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
            # A request whose caller gave up (timeout, disconnect) is dropped; the rest can no longer be cancelled.
            items = [it for it in items if it[1].set_running_or_notify_cancel()]
            if not items:
                continue
            try:
                x = items[0][0] if len(items) == 1 else np.concatenate([it[0] for it in items])
                streaming = items[0][3] is not None
                t0 = time.perf_counter()
                if streaming:
                    states = {
                        k: np.concatenate([it[3][k] for it in items]) if len(items) > 1 else v
                        for k, v in items[0][3].items()
                    }
                    logits, spikes, after = self.runtime.step(x, states)
                else:
                    logits, spikes = self.runtime.run(x)
                seconds = time.perf_counter() - t0
                if self.on_batch is not None:
                    self.on_batch(len(x), seconds, spikes)
                start = 0
                for xi, fut, queued, _ in items:
                    rows = slice(start, start + len(xi))
                    fut.set_result(
                        BatchResult(
                            logits[rows],
                            spikes[rows],
                            t0 - queued,
                            seconds,
                            len(x),
                            {k: v[rows] for k, v in after.items()} if streaming else None,
                        )
                    )
                    start += len(xi)
            except Exception as e:  # a runtime failure fails every request of the batch, not the server
                for it in items:
                    if not it[1].done():
                        it[1].set_exception(e)
