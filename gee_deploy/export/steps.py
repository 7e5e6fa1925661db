"""The pieces of a graph unrolled over T steps that every writer of one shares: the ONNX writer of our models
(:mod:`.writer`) and the NIR import (:mod:`gee_deploy.nir.importer`).

Layouts (:mod:`gee_deploy.walk`): a static value is ``[N, ...]``, the same at every step; a per-step value is
``[T*N, ...]``, t-major. Every function appends its ops to a :class:`~.graph.GraphBuilder` and returns tensor names.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from ..spec import LOGITS, SPIKE_COUNTS
from .graph import GraphBuilder

__all__ = [
    "concat_steps",
    "integer_count",
    "repeat_steps",
    "spikes_and_count",
    "step_slices",
    "uint8_spikes",
    "write_outputs",
]


def step_slices(graph: GraphBuilder, x: str, static: bool, steps: int, hint: str) -> list[str]:
    """``x`` as T per-step tensors ``[N, ...]``: a static value T times, a per-step one split along axis 0."""
    if static:
        return [x] * steps
    if steps == 1:
        return [x]
    return graph.op("Split", [x], f"{hint}.x", outputs=steps, axis=0, num_outputs=steps)


def repeat_steps(graph: GraphBuilder, x: str, rank: int, steps: int) -> str:
    """Static ``x`` ``[N, ...]`` (``rank`` per-sample axes) as the per-step ``[T*N, ...]`` (Tile along axis 0)."""
    reps = graph.const([steps] + [1] * rank, "reps", np.int64)
    return graph.op("Tile", [x, reps], "repeat")


def concat_steps(graph: GraphBuilder, parts: list[str], hint: str) -> str:
    """T per-step tensors ``[N, ...]`` as one per-step ``[T*N, ...]`` (one step: the tensor itself)."""
    return graph.op("Concat", parts, hint, axis=0) if len(parts) > 1 else parts[0]


def spikes_and_count(graph: GraphBuilder, fired: list[str], shape: tuple[int, ...], name: str) -> tuple[str, str, str]:
    """A spiking layer's outputs from its T boolean fire maps ``fired`` (each ``[N, *shape]``).

    The maps are concatenated (1 byte each) and cast to float once; the count sums that float tensor over every
    per-sample axis (ReduceSum, any layout: a runtime that keeps the spikes in a blocked or channels-last layout,
    as OpenVINO does, reads them where they are instead of reordering them for a Reshape), then the T steps of
    each sample. Exact while a layer's count per sample stays below 2^24 (sums of 0/1 values in any order).

    Returns:
        the fire maps (bool ``[T*N, *shape]``), the spikes (float32 ``[T*N, *shape]``), the count per sample
        (float32 ``[N, 1]``).
    """
    fire_maps = concat_steps(graph, fired, f"{name}.fired")
    spikes = graph.op("Cast", [fire_maps], f"{name}.spikes", to=TensorProto.FLOAT)
    axes = graph.const(list(range(1, len(shape) + 1)), f"axes1_{len(shape)}", np.int64)
    per_map = graph.op("ReduceSum", [spikes, axes], f"{name}.per_map", keepdims=0)  # [T*N]
    per_step = graph.op(
        "Reshape", [per_map, graph.const([len(fired), -1], "steps_by_samples", np.int64)], f"{name}.per_step"
    )  # [T, N]
    count = graph.op("ReduceSum", [per_step, graph.const([0], "axis0", np.int64)], f"{name}.count", keepdims=1)
    return fire_maps, spikes, graph.op("Reshape", [count, graph.const([-1, 1], "column", np.int64)], f"{name}.count")


def integer_count(graph: GraphBuilder, uint8: str, steps: int, neurons: int, name: str) -> str:
    """A spiking layer's count per sample (float32 ``[N, 1]``) from its uint8 fire maps ``uint8``
    (``[T*N, ...]``, ``neurons`` per sample) on the int8 GEMM kernel: the maps in blocks of B = gcd(neurons, 256)
    spikes times a column of B int8 ones (MatMulInteger, a constant of at most 256 bytes), summed over the steps
    and the blocks in int32 and cast to float: the same integers as :func:`spikes_and_count`'s float ReduceSum, in
    one pass over 1 byte per spike (docs/export.md, "Spike counts"). onnxruntime runs MatMulInteger; TensorRT does
    not, so QDQ graphs keep the float count.
    """
    block = math.gcd(neurons, 256)
    blocks = graph.op(
        "Reshape",
        [uint8, graph.const([steps, -1, neurons // block, block], f"{name}.blocks_shape", np.int64)],
        f"{name}.blocks",
    )
    ones = graph.const(np.ones((block, 1)), f"{name}.ones", np.int8)
    sums = graph.op("MatMulInteger", [blocks, ones], f"{name}.block_counts")  # [T, N, neurons / B, 1] int32
    count = graph.op(
        "ReduceSum", [sums, graph.const([0, 2], "axes02", np.int64)], f"{name}.count", keepdims=1
    )  # [1, N, 1, 1]
    count = graph.op("Reshape", [count, graph.const([1, -1, 1], "count_shape", np.int64)], f"{name}.count")
    count = graph.op("Cast", [count], f"{name}.count", to=TensorProto.FLOAT)  # [1, N, 1]
    return graph.op("Squeeze", [count, graph.const([0], "axis0", np.int64)], f"{name}.count")


def uint8_spikes(graph: GraphBuilder, cache: dict[str, str], spikes: str, source: str, layer: str) -> str:
    """0/1 spikes ``spikes`` as uint8 (exact), cast from ``source`` (the spikes or their boolean fire maps) once
    per spike tensor however many int8 layers read it; ``cache`` maps spike tensors to their casts."""
    if spikes not in cache:
        cache[spikes] = graph.op("Cast", [source], f"{layer}.uint8", to=TensorProto.UINT8)
    return cache[spikes]


def write_outputs(graph: GraphBuilder, y: str, static: bool, steps: int, classes: int, counts: list[str]) -> None:
    """The graph outputs: ``logits`` ``[N, classes]``, the mean over the T steps of ``y`` (static, or one step:
    ``y`` itself), and ``spike_counts`` ``[N, L]``, the per-layer counts ``[N, 1]`` side by side."""
    if static or steps == 1:
        graph.op("Identity", [y], out_names=[LOGITS])
    else:
        per_step = graph.op(
            "Reshape", [y, graph.const([steps, -1, classes], "steps_shape", np.int64)], "per_step_logits"
        )
        graph.op("ReduceMean", [per_step, graph.const([0], "axis0", np.int64)], out_names=[LOGITS], keepdims=0)
    graph.op("Concat", counts, out_names=[SPIKE_COUNTS], axis=1)
