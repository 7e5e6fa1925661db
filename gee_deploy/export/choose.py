"""Per-layer choice between the dense and factorised forms of a genetic layer (``--variant auto``).

By estimated cost (the default): the factorised form wins when its MACs plus the data movement of its
intermediates (:attr:`FactorisedCost.effective_macs`) are fewer than the dense MACs; MACs alone favour the
factorised form on layers where it is slower on a CPU. With ``profile=True``: by measured onnxruntime
latency of the layer alone, written both ways, at the batch it runs at in the unrolled graph (T x batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..kinds import ExportVariant, Int8Policy
from ..ort_session import create_session
from .configs import INT8_MIN_MACS, Variant
from .factorised import FactorisedCost, emit_factorised
from .folding import FoldedLayer, emit_dense
from .graph import GraphBuilder, tensor_info

__all__ = ["Chooser", "Int8Chooser", "make_chooser", "make_int8_chooser", "layer_latency"]

# (layer name, folded layer, per-sample input shape, output shape, factorised cost, dense MACs)
#   -> ExportVariant.DENSE | ExportVariant.FACTORISED
Chooser = Callable[[str, FoldedLayer, tuple, tuple, FactorisedCost, int], ExportVariant]
# (layer name, dense MACs per call) of a layer that reads spikes -> write it int8?
Int8Chooser = Callable[[str, int], bool]


def layer_latency(
    layer: FoldedLayer,
    form: ExportVariant,
    cost: FactorisedCost,
    in_shape: tuple,
    out_shape: tuple,
    batch: int,
    opset: int,
    repeats: int = 30,
) -> float:
    """Median seconds of one onnxruntime run of layer ``layer`` alone, written as ``form``, on ``batch`` inputs."""
    graph = GraphBuilder()
    if form == ExportVariant.FACTORISED:
        y = emit_factorised(graph, "x", layer, cost, out_shape, "layer")
    else:
        y = emit_dense(graph, "x", layer, "layer")
    graph.op("Identity", [y], out_names=["y"])
    model = graph.model([tensor_info("x", ["n", *in_shape])], [tensor_info("y", ["n", *out_shape])], opset, {})
    session = create_session(model.SerializeToString())
    x = np.random.default_rng(0).integers(0, 2, (batch, *in_shape)).astype(np.float32)  # spike-like input
    for _ in range(3):
        session.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def make_chooser(variant: Variant, profile: bool, timesteps: int, opset: int, batch: int = 1) -> Chooser:
    """The :data:`Chooser` of ``variant``; ``profile`` switches per-layer choices from MACs to latency."""
    if variant.per_layer is None:
        fixed = variant.fixed
        assert fixed is not None, f"variant {variant.name} chooses per layer or sets fixed"  # configs.VARIANTS
        return lambda name, layer, in_shape, out_shape, cost, dense_macs: fixed

    def by_cost(
        name: str, layer: FoldedLayer, in_shape: tuple, out_shape: tuple, cost: FactorisedCost, dense_macs: int
    ) -> ExportVariant:
        if not profile:
            return ExportVariant.FACTORISED if cost.effective_macs < dense_macs else ExportVariant.DENSE
        n = batch * timesteps
        dense_s = layer_latency(layer, ExportVariant.DENSE, cost, in_shape, out_shape, n, opset)
        fact_s = layer_latency(layer, ExportVariant.FACTORISED, cost, in_shape, out_shape, n, opset)
        return ExportVariant.FACTORISED if fact_s < dense_s else ExportVariant.DENSE

    return by_cost


def make_int8_chooser(variant: Variant) -> Int8Chooser | None:
    """Which spike-reading layers ``variant`` writes int8: none, all, or (``choose``) those of at least
    INT8_MIN_MACS per call, whatever their geometry (docs/export.md, "Int8")."""
    if variant.int8 == Int8Policy.NEVER:
        return None
    if variant.int8 == Int8Policy.ALL:
        return lambda name, dense_macs: True
    return lambda name, dense_macs: dense_macs >= INT8_MIN_MACS
