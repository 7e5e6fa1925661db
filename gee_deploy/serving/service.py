"""One served model, shared by the HTTP app and the gRPC service: admission, batching, timing, statistics.

Both protocol edges run on the same asyncio event loop, so the in-flight count needs no lock; the batcher's
worker thread is the only one that touches the runtime. Protocol edges pass a ``decode`` and an ``encode``
function to :meth:`ModelService.infer`, which admits the request (concurrency limit), runs it through the
batcher with a timeout and records Triton's statistics; errors come out as :mod:`.codec` exceptions.

For a streaming graph each request is one step of a sequence: the service takes the sequence's membranes
from its :class:`~.sequences.SequenceTable`, sends them with the step to the batcher (steps of different
sequences batch into one graph call) and keeps what comes back, adding the running summary to the answer.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from ..spec import LOGITS, SPIKE_COUNTS
from ..triton_config import Sequences, model_config
from .batcher import Batcher, BatchResult
from .codec import VERSION, Decoded, InferenceTimeout, InvalidInput, ModelNotFound, ServerBusy
from .config import ServeConfig
from .metrics import Metrics, Statistics
from .runtimes import Runtime
from .sequences import SequenceTable

__all__ = ["ModelService"]

R = TypeVar("R")


class ModelService:
    """A model behind a dynamic batcher, with a concurrency limit and Triton statistics.

    Args:
        runtime: what answers (an onnxruntime session for ``gee-deploy serve``); only the batcher calls it.
        config: the name and limits (:class:`~.config.ServeConfig`, checked when built): ``max_batch``,
            ``max_delay_ms``, ``max_concurrency`` (requests in flight, HTTP and gRPC together, before new ones get
            :class:`ServerBusy`) and ``infer_timeout_s`` (before :class:`InferenceTimeout`).
    """

    def __init__(self, runtime: Runtime, config: ServeConfig):
        self.config, self.name, self.spec = config, config.name, runtime.spec
        self.max_batch, self.max_delay_ms = config.max_batch, config.max_delay_ms
        self.max_concurrency, self.infer_timeout = config.max_concurrency, config.infer_timeout_s
        self.instance_kind = "KIND_GPU" if getattr(runtime, "device", "cpu") == "cuda" else "KIND_CPU"
        self.cpu_accelerator = "openvino" if runtime.name.startswith("openvino") else None
        self.metrics = Metrics(self.name, self.spec.spiking_layers)
        self.stats = Statistics()
        self.batcher = Batcher(runtime, config.max_batch, config.max_delay_ms, on_batch=self._on_batch)
        self.sequences = (
            SequenceTable(runtime.state_shapes, config.max_sequences, config.sequence_idle_s, self.metrics)
            if self.spec.streaming
            else None
        )
        self.inflight = 0
        self._results: deque = deque()  # (asyncio future, finished batcher future), filled by the batcher thread
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ready = True  # false from SIGTERM on: readiness probes see it before the listener closes
        self.draining = False  # true once the listener is closed: HTTP answers say Connection: close

    def _on_batch(self, size: int, seconds: float, spike_counts) -> None:
        self.metrics.observe_batch(size, spike_counts)
        self.stats.observe_execution(size, seconds)

    def check_model(self, name: str, version: str | None) -> None:
        """Raise :class:`ModelNotFound` unless ``name`` (and ``version``, when given) is what this serves."""
        if name != self.name:
            raise ModelNotFound(f"unknown model {name!r}; this server has {self.name!r}")
        if version not in (None, "", VERSION):
            raise ModelNotFound(f"model {self.name!r} has only version {VERSION}, not {version!r}")

    def model_config(self):
        """Triton's model configuration of what this serves (:func:`gee_deploy.triton_config.model_config`: the one
        ``gee-deploy export --format triton`` writes), with one instance on this runtime's device."""
        sequences = (
            None
            if self.sequences is None
            else Sequences(self.sequences.state_shapes, self.config.max_sequences, self.config.sequence_idle_s)
        )
        return model_config(
            self.name,
            self.spec,
            self.max_batch,
            self.max_delay_ms,
            instance_kind=self.instance_kind,
            sequences=sequences,
            cpu_accelerator=self.cpu_accelerator,
        )

    @staticmethod
    def values(result: BatchResult) -> dict:
        """Output name -> array, in the contract's names (with a streaming step's running summary)."""
        return {LOGITS: result.logits, SPIKE_COUNTS: result.spike_counts, **(result.summary or {})}

    async def infer(self, decode: Callable[[], Decoded], encode: Callable[[Decoded, BatchResult], R]) -> R:
        """Admit, decode, batch, encode one request; record its statistics.

        Raises:
            ServerBusy: ``max_concurrency`` requests are already in flight.
            InferenceTimeout: the batch did not come back within ``infer_timeout_s``.
            InvalidInput: from ``decode``, or a batch larger than ``max_batch`` (the ``max_batch_size`` the model
                configuration advertises; Triton refuses such a request the same way); for a streaming graph, a
                request without ``sequence_id``.
            UnknownSequence, SequenceBusy, TooManySequences: a streaming step the state table refuses
                (:meth:`~.sequences.SequenceTable.begin`).
        """
        if self.inflight >= self.max_concurrency:
            raise ServerBusy(
                f"{self.inflight} inference requests in flight, the limit is {self.max_concurrency}; retry later"
            )
        self.inflight += 1
        self.metrics.inflight.inc()
        t0 = time.perf_counter()
        try:
            decoded = decode()
            if len(decoded.x) > self.max_batch:
                raise InvalidInput(
                    f"inputs.0.shape: a batch of {len(decoded.x)} exceeds this model's "
                    f"max_batch_size {self.max_batch}; split the request"
                )
            t1 = time.perf_counter()
            step = decoded.sequence
            table = self.sequences
            if table is not None:
                if step is None:
                    raise InvalidInput(
                        f"parameters.sequence_id: {self.name} is a streaming graph (one timestep per "
                        "request); every request names its sequence (sequence_id, with "
                        "sequence_start on its first step)"
                    )
                states = table.begin(step)
            else:
                states = None
            try:
                result = await self._run(decoded.x, states)
            except BaseException:
                if table is not None and step is not None:
                    table.abort(step)
                raise
            if table is not None and step is not None:
                assert result.states is not None  # a run given states returns the next ones
                result = result._replace(summary=table.commit(step, result.logits, result.spike_counts, result.states))
            t2 = time.perf_counter()
            answer = encode(decoded, result)
            t3 = time.perf_counter()
            self.stats.observe_success(t3 - t0, t1 - t0, result.queue_s, result.compute_s, t3 - t2)
            return answer
        except BaseException:
            self.stats.observe_failure(time.perf_counter() - t0)
            raise
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()

    async def _run(self, x, states) -> BatchResult:
        """One request through the batcher, bounded by ``infer_timeout_s``."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        fut = loop.create_future()
        job = self.batcher.submit(x, states)
        job.add_done_callback(functools.partial(self._finished, fut))
        # A timer that cancels the future (asyncio.wait_for would wrap it in one more future and callback
        # per request); the batcher skips a request cancelled before its batch starts.
        timer = loop.call_later(self.infer_timeout, fut.cancel)
        try:
            return await fut
        except asyncio.CancelledError:
            job.cancel()
            if timer.when() <= loop.time():
                raise InferenceTimeout(f"inference did not finish within {self.infer_timeout:g} s") from None
            raise
        finally:
            timer.cancel()

    def _finished(self, fut: asyncio.Future, job) -> None:
        """On the batcher's thread: queue the result and wake the event loop once per batch, not per request
        (each wake-up is a write to the loop's self-pipe and a pass of the loop)."""
        self._results.append((fut, job))
        if not self._wake_pending:
            self._wake_pending = True
            assert self._loop is not None  # _run set it before submitting the job
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        """On the event loop: hand every finished batch result to its waiting request."""
        self._wake_pending = False  # before draining, so a result queued meanwhile schedules another pass
        while self._results:
            fut, job = self._results.popleft()
            if fut.done():  # timed out or the client went away
                continue
            if job.cancelled():
                fut.cancel()
            elif job.exception() is not None:
                fut.set_exception(job.exception())
            else:
                fut.set_result(job.result())

    def close(self) -> None:
        """Finish what the batcher holds, then stop it."""
        self.batcher.close()
