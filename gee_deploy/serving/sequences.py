"""The state table of a streaming graph's server: each live sequence's membranes, after Triton's sequence
extension (``sequence_id``, ``sequence_start``, ``sequence_end``; docs/streaming.md).

A streaming graph (``gee-deploy export --streaming``) runs one timestep per call and carries the membranes as
graph I/O (``v_in.<lif>`` in, ``v_out.<lif>`` out). The table holds them between the calls of one sequence:
zeros at ``sequence_start``, the step's ``v_out`` kept after each step, dropped at ``sequence_end`` or after
``idle_s`` without a step (Triton's ``max_sequence_idle_microseconds``). It also keeps the running summary a
streaming classifier is read by: the mean of the step logits so far and the spikes so far, which at step T
equal the unrolled graph's ``logits`` and ``spike_counts``.

Isolation: a step names its sequence and only that entry is read or written; a step is refused (and changes
nothing) when its sequence is not live without ``sequence_start`` (:class:`~.codec.UnknownSequence`), when the
sequence's previous step is still running (:class:`~.codec.SequenceBusy`: steps of one sequence run one at a
time, in order), or when a new sequence finds the table full (:class:`~.codec.TooManySequences`). A step that
fails after it began (a runtime error, a timeout) leaves the sequence as it was before the step.

The table lives on the server's event loop and is touched only there, so it needs no lock. It lives in the
process: a restart loses every sequence.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .codec import (
    MEAN_LOGITS,
    TOTAL_SPIKE_COUNTS,
    SequenceBusy,
    SequenceStep,
    TooManySequences,
    UnknownSequence,
)
from .metrics import Metrics

__all__ = ["SequenceTable"]


@dataclass
class _Sequence:
    states: dict[str, np.ndarray]  # v_in.<lif> -> [1, ...]: the membranes after the last step
    logits_sum: np.ndarray | float = 0.0  # [1, classes]
    spikes_sum: np.ndarray | float = 0.0  # [1, L]
    steps: int = 0
    last: float = 0.0  # clock() of the last step's end (or start)
    busy: bool = False
    fresh: bool = field(default=False)  # created by the step in flight: a failed first step drops it


class SequenceTable:
    """Live sequences of one streaming graph.

    Args:
        state_shapes: ``v_in.<lif>`` -> per-sample membrane shape (the graph's inputs).
        max_sequences: live sequences before a new one is refused.
        idle_s: a sequence with no step for this long is dropped.
        metrics: counts live, started, ended and expired sequences.
        clock: seconds (monotonic); tests may pass their own.
    """

    def __init__(
        self,
        state_shapes: dict[str, tuple[int, ...]],
        max_sequences: int,
        idle_s: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.state_shapes, self.max_sequences, self.idle_s = state_shapes, max_sequences, idle_s
        self.metrics, self.clock = metrics, clock
        self.live: OrderedDict[int | str, _Sequence] = OrderedDict()  # least recently used first
        self._gone: OrderedDict[int | str, str] = OrderedDict()  # recently dropped ids -> why, for messages

    def _zeros(self) -> dict[str, np.ndarray]:
        return {name: np.zeros((1, *shape), np.float32) for name, shape in self.state_shapes.items()}

    def _drop(self, sid, why: str) -> None:
        del self.live[sid]
        self._gone[sid] = why
        self._gone.move_to_end(sid)
        while len(self._gone) > self.max_sequences:
            self._gone.popitem(last=False)
        self.metrics.sequences_live.set(len(self.live))

    def expire(self) -> int:
        """Drop every sequence idle for longer than ``idle_s`` (none with a step in flight); returns how many."""
        cutoff, dropped = self.clock() - self.idle_s, 0
        for sid, seq in list(self.live.items()):  # least recently used first: stop at the first recent one
            if seq.last > cutoff:
                break
            if not seq.busy:
                self._drop(sid, f"expired after {self.idle_s:g} s without a step")
                self.metrics.sequences_expired.inc()
                dropped += 1
        return dropped

    def begin(self, step: SequenceStep) -> dict[str, np.ndarray]:
        """Admit one step; returns the membranes to feed (zeros at ``sequence_start``).

        Raises:
            SequenceBusy: the sequence's previous step is still running.
            UnknownSequence: the sequence is not live and the step has no ``sequence_start``.
            TooManySequences: a new sequence and ``max_sequences`` are live.
        """
        self.expire()
        seq = self.live.get(step.id)
        if seq is not None and seq.busy:
            raise SequenceBusy(
                f"{step}: its previous step is still running; steps of one sequence run one at a "
                "time, send the next once this one is answered"
            )
        if seq is None and not step.start:
            why = self._gone.get(step.id, "was never started")
            raise UnknownSequence(f"{step}: not live ({why}); its first request must set sequence_start")
        if seq is None:
            if len(self.live) >= self.max_sequences:
                raise TooManySequences(
                    f"{step}: {len(self.live)} sequences are live, the limit is "
                    f"{self.max_sequences}; end one (sequence_end) or wait for idle ones to expire"
                )
            seq = self.live[step.id] = _Sequence(self._zeros(), fresh=True)
            self._gone.pop(step.id, None)
            self.metrics.sequences_live.set(len(self.live))
        seq.busy, seq.last = True, self.clock()
        self.live.move_to_end(step.id)
        return self._zeros() if step.start else seq.states

    def commit(
        self, step: SequenceStep, logits: np.ndarray, spikes: np.ndarray, states: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Keep the step's membranes and add its outputs to the summary; returns the summary outputs.

        Args:
            logits, spikes: this step's [1, classes] and [1, L].
            states: the membranes after the step (``v_in.<lif>`` -> [1, ...]).
        """
        seq = self.live[step.id]
        if step.start:  # a restart of a live sequence begins from rest too
            seq.logits_sum, seq.spikes_sum, seq.steps = 0.0, 0.0, 0
            self.metrics.sequences_started.inc()
        seq.states = states
        seq.logits_sum = seq.logits_sum + logits
        seq.spikes_sum = seq.spikes_sum + spikes
        seq.steps += 1
        seq.busy, seq.fresh, seq.last = False, False, self.clock()
        self.live.move_to_end(step.id)  # the table stays in order of last use: expire() stops at the first recent
        summary = {
            MEAN_LOGITS: (seq.logits_sum / np.float32(seq.steps)).astype(np.float32),
            TOTAL_SPIKE_COUNTS: np.asarray(seq.spikes_sum, np.float32),
        }
        if step.end:
            self._drop(step.id, "ended with sequence_end")
            self.metrics.sequences_ended.inc()
        return summary

    def abort(self, step: SequenceStep) -> None:
        """The step failed after :meth:`begin`: the sequence stays as it was before it (a new one is dropped)."""
        seq = self.live.get(step.id)
        if seq is None:
            return
        if seq.fresh:
            del self.live[step.id]
            self.metrics.sequences_live.set(len(self.live))
        else:
            seq.busy = False
