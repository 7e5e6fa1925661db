"""Write a SpikingNet as an ONNX graph with the T timesteps unrolled (or one step, for streaming).

:class:`OnnxWriter` is the core model walk (:mod:`gee_deploy.walk`) with ONNX emitters: the walk decides the
dataflow, the static ``[N, ...]`` and per-step ``[T*N, ...]`` layouts, the spike sources and the layer table;
this module only says which ops each step becomes. Every stateless layer is one op for all T steps; a LIF
splits its input into T slices, runs the recurrence of :mod:`gee_deploy.neurons` (the same functions the
PyTorch eval path runs, here with graph-building ops, so the floats and their order are the same) and
concatenates the spikes back.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from torch import nn

from ..batchnorm import BATCHNORMS, batchnorm_affine
from ..checkpoint import model_origin
from ..errors import UnsupportedModuleError
from ..kinds import ExportVariant, Form, Int8Form, LayerKind, Precision, Storage
from ..neurons import LIF, charge, fire, reset
from ..quantisation import InputCodes
from ..spec import BATCH_DIM, INPUT_NAME, LOGITS, SPIKE_COUNTS, LayerSpec, ModelSpec, state_names
from ..walk import ModelWalk, Value, pool_geometry
from ..zoo.base import ConvPool, SpikingNet
from .choose import Chooser, Int8Chooser, make_int8_chooser
from .factorised import emit_factorised, factorised_cost
from .folding import emit_dense, fold_layer
from .graph import GraphBuilder, set_metadata, tensor_info
from .int8 import (
    Int8Layer,
    covers_input,
    dequantised_layer,
    emit_input_codes,
    emit_int8,
    emit_int8_nhwc,
    emit_qdq,
    int8_layer,
    quantise_spikes,
    scale_name,
    stem_input_scale,
)
from .options import ExportOptions
from .steps import concat_steps, integer_count, repeat_steps, spikes_and_count, step_slices, uint8_spikes, write_outputs
from .weights import WeightOps, fold_constants

__all__ = ["Chooser", "GraphOps", "Int8Chooser", "OnnxWriter", "write_graph"]


# An int8 conv (integer form, NHWC) with at least this many outputs per sample runs one int8 GEMM per step
# (OnnxWriter): below it the T-fold ops cost more than the smaller passes save. Measured interleaved, one thread,
# thresholds 0 / 2^14 / 2^15 / 2^16 (docs/export.md, "Integer form speed"): 0 made VGG-16 at batch 1 0.84-0.89x
# and SmallNet 0.8x (their small late maps); 2^15 and 2^16 were within noise of each other.
STEP_GEMM_MIN_OUTPUTS = 2**15


class GraphOps:
    """:class:`gee_deploy.neurons.Ops` that append nodes to a graph; tensors are names, scalars become constants.

    ``out_name``, when set, names the next membrane ``v`` written (a streaming graph's ``v_out.<lif>``).
    """

    def __init__(self, graph: GraphBuilder, layer: str):
        self.graph, self.layer = graph, layer
        self.out_name: str | None = None

    def _tensor(self, v) -> str:
        return v if isinstance(v, str) else self.graph.const(v, f"{self.layer}.const")

    def _op(self, op_type: str, inputs: list, what: str, **kw) -> str:
        if what == "v" and self.out_name:
            kw["out_names"], self.out_name = [self.out_name], None
        return self.graph.op(op_type, [self._tensor(v) for v in inputs], f"{self.layer}.{what}", **kw)

    def add(self, a, b, what):
        return self._op("Add", [a, b], what)

    def sub(self, a, b, what):
        return self._op("Sub", [a, b], what)

    def mul(self, a, b, what):
        return self._op("Mul", [a, b], what)

    def div(self, a, b, what):
        return self._op("Div", [a, b], what)

    def greater_equal(self, a, b, what):
        return self._op("GreaterOrEqual", [a, b], what)

    def where(self, cond, a, b, what):
        return self._op("Where", [cond, a, b], what)

    def zero_where_fired(self, h, spike, threshold, what):
        alpha = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))  # keeps exactly h >= threshold
        return self._op("Sub", [h, self._op("ThresholdedRelu", [h], "fired_h", alpha=alpha)], what)

    def to_float(self, a, what):
        return self._op("Cast", [a], what, to=TensorProto.FLOAT)


def _name(x: Value[str]) -> str:
    """The graph name of a value this writer emitted (every emit_* here returns one)."""
    assert x.name is not None, "a value without a graph name"
    return x.name


class OnnxWriter(ModelWalk[str]):
    """The model walk writing ONNX nodes into ``self.graph``; ``counts`` are the per-LIF [N, 1] spike counts.

    ``int8``: which spike-reading layers to write with int8 weights (:mod:`gee_deploy.export.int8`); None: none.
    ``int8_form``: how they are spelt (MatMulIntegerToFloat or QuantizeLinear / DequantizeLinear).
    In the integer form (unrolled graphs) an int8 conv's output stays NHWC, the layout its GEMM writes
    and the next int8 conv gathers from: the LIF and the residual add are elementwise, so the spikes stay NHWC
    from one int8 conv to the next and no Transpose runs between them; a reader that needs NCHW (a float layer,
    pooling, the outputs) gets one Transpose of that value (of its 1-byte fire maps for a LIF's spikes), once;
    an int8 conv or an add with an NHWC operand reading NCHW spikes (the stem's) gets their NHWC Transpose.
    A streaming graph keeps NCHW throughout (its membranes are NCHW graph inputs and outputs).
    Such an int8 conv with at least :data:`STEP_GEMM_MIN_OUTPUTS` outputs per sample runs one int8 GEMM per
    step (:func:`.int8.emit_int8_nhwc` on the T slices of its uint8 input) and hands the LIF and the residual add
    its T outputs as they are: no Split of the float membrane input, and each pass over 1/T of the data. The
    whole [T*N, ...] tensor is the Concat of the parts, which the graph keeps only where a reader needs it
    (:meth:`GraphBuilder.model` drops dead nodes).
    Layers reading analog values (the stem, an average pool of spikes) always stay float32. Every weight is
    computed in the graph from the stored parameters (:mod:`gee_deploy.export.weights`); :func:`write_graph`
    folds that subgraph for ``folded`` storage.
    """

    def __init__(
        self,
        model: SpikingNet,
        choose: Chooser,
        streaming: bool = False,
        int8: Int8Chooser | None = None,
        int8_form: Int8Form = Int8Form.INTEGER,
    ):
        super().__init__(model, streaming)
        self.choose = choose
        self.int8 = int8
        self.int8_form = Int8Form(int8_form)
        self.graph = GraphBuilder()
        names = {id(t): n for n, t in model.named_buffers()} | {id(t): n for n, t in model.named_parameters()}
        self.ops = WeightOps(self.graph, names)
        self.counts: list[str] = []
        self._uint8: dict[str, str] = {}  # spike tensor -> its uint8 cast / int8 QDQ pair (shared by every reader)
        self._fired: dict[str, str] = {}  # a LIF's float spikes -> the boolean fire maps they were cast from
        self._nhwc_out = int8 is not None and self.int8_form == Int8Form.INTEGER and not streaming
        self._nhwc: set[str] = set()  # tensors held NHWC (4-d values only; their Value shapes stay C, H, W)
        self._other_layout: dict[str, str] = {}  # a 4-d tensor <-> its Transpose to the other layout
        self._steps: dict[str, list[str]] = {}  # a per-step tensor [T*N, ...] -> its T*B parts (see below)
        self._bands: dict[str, int] = {}  # ... and B, the bands of rows each step's part is in (t-major parts)

    def nchw(self, name: str) -> str:
        """``name`` in the NCHW layout every reader but an int8 conv, a LIF and an add expects: itself, or its
        Transpose (written once). A LIF's float spikes are transposed as their 1-byte fire maps, then cast."""
        return self._transposed(name, nhwc=False) if name in self._nhwc else name

    def nhwc(self, name: str) -> str:
        """4-d ``name`` in NHWC, the layout an int8 conv gathers from: itself, or its Transpose, as :meth:`nchw`."""
        return name if name in self._nhwc else self._transposed(name, nhwc=True)

    def _transposed(self, name: str, nhwc: bool) -> str:
        if name not in self._other_layout:
            graph, perm, tag = self.graph, [0, 2, 3, 1] if nhwc else [0, 3, 1, 2], "nhwc" if nhwc else "nchw"
            fired = self._fired.get(name)
            if fired is not None:
                fired = graph.op("Transpose", [fired], f"{name}.fired_{tag}", perm=perm)
                out = graph.op("Cast", [fired], f"{name}.{tag}", to=TensorProto.FLOAT)
                self._fired[out] = fired
            else:
                out = graph.op("Transpose", [name], f"{name}.{tag}", perm=perm)
            if nhwc:
                self._nhwc.add(out)
            self._other_layout[name], self._other_layout[out] = out, name
        return self._other_layout[name]

    def value(self, x: Value) -> Value:
        """``x`` with its name in NCHW (:meth:`nchw`)."""
        return replace(x, name=self.nchw(_name(x)))

    def emit_input(self) -> str:
        graph, model = self.graph, self.model
        if isinstance(model.input_codes, InputCodes):  # a quantised stem reads 8-bit codes
            return emit_input_codes(graph, INPUT_NAME, model.input_codes)
        return graph.op(
            "Div",
            [
                graph.op("Sub", [INPUT_NAME, graph.const(model.mean.numpy(), "mean")], "normalise"),
                graph.const(model.std.numpy(), "std"),
            ],
            "normalised",
        )

    def emit_weight(
        self,
        name: str,
        m: nn.Module,
        bn: nn.Module | None,
        x: Value,
        out_shape: tuple,
        pooled: ConvPool | None,
        dense_macs: int,
        calls: int,
    ) -> tuple[str, LayerSpec]:
        ops = self.ops
        if stem_input_scale(pooled if pooled is not None else m) is not None:  # a quantised stem, in every variant
            layer = int8_layer(m, bn, pooled, ops, name)
            return emit_qdq(self.graph, _name(x), layer, name, ops), self._int8_spec(
                name, layer, dense_macs, calls, None
            )
        int8, source = self.int8, x.spikes_from  # int8 weights only for layers that read spikes
        if int8 is not None and source is not None:
            layer = int8_layer(m, bn, pooled, ops, name)
            if int8(name, dense_macs):
                if self.int8_form == Int8Form.QDQ:  # 0/1 spikes as signed int8 at scale 1: exact, once per spike tensor
                    x = self.value(x)
                    if _name(x) not in self._uint8:
                        self._uint8[_name(x)] = quantise_spikes(self.graph, _name(x), source)
                    y = emit_qdq(self.graph, self._uint8[_name(x)], layer, name, ops)
                else:  # 0/1 spikes as uint8: exact; from the 1-byte fire maps when they are at hand
                    nhwc = self._nhwc_out and layer.kind == LayerKind.CONV  # gathers in NHWC, stays NHWC
                    nhwc = nhwc and (not covers_input(layer, x.shape) or _name(x) in self._nhwc)
                    if nhwc and _name(x) in self._fired:
                        x = replace(x, name=self.nhwc(_name(x)))  # a LIF's spikes: its fire maps in NHWC, once
                    spikes = uint8_spikes(
                        self.graph, self._uint8, _name(x), self._fired.get(_name(x), _name(x)), source
                    )
                    if nhwc and _name(x) not in self._nhwc:  # (pooled spikes: transposed as uint8)
                        spikes = self.graph.op("Transpose", [spikes], f"{name}.nhwc", perm=[0, 2, 3, 1])
                    if nhwc and self.steps > 1 and int(np.prod(out_shape)) >= STEP_GEMM_MIN_OUTPUTS:
                        # one GEMM per step (its rows of the one GEMM: the same sums)
                        parts = step_slices(self.graph, spikes, False, self.steps, f"{name}.steps")
                        ys = list(emit_int8_nhwc(self.graph, parts, layer, x.shape, name, ops))
                        y = self._whole(ys, len(ys) // self.steps, f"{name}.steps")
                        self._nhwc.add(y)
                    elif nhwc:
                        y = emit_int8_nhwc(self.graph, spikes, layer, x.shape, name, ops)
                        self._nhwc.add(y)
                    else:
                        y = emit_int8(self.graph, spikes, layer, x.shape, name, ops)
                return y, self._int8_spec(name, layer, dense_macs, calls, source)
        x = self.value(x)
        if getattr(pooled if pooled is not None else m, "quantiser", None) is not None:
            folded = dequantised_layer(m, bn, pooled, ops, name)  # an int8 fine-tuned layer computes with q s
        else:
            folded = fold_layer(m, bn, pooled=pooled is not None, ops=ops, hint=name)
        fact = factorised_cost(folded, x.shape, out_shape) if folded.genetic else None
        variant = (
            ExportVariant(self.choose(name, folded, x.shape, out_shape, fact, dense_macs))
            if fact is not None
            else ExportVariant.DENSE
        )
        if variant == ExportVariant.FACTORISED:
            assert fact is not None  # only a genetic layer with a factorised cost is offered the choice
            y = emit_factorised(self.graph, _name(x), folded, fact, out_shape, name, ops)
            macs, spike_macs, form = fact.macs, fact.spike_macs, fact.form
        else:
            y = emit_dense(self.graph, _name(x), folded, name, ops)
            macs, spike_macs, form = dense_macs, dense_macs, Form.DENSE
        return y, LayerSpec(
            name=name,
            kind=folded.kind,
            variant=variant,
            macs=int(macs),
            input_is_spikes=x.spikes_from is not None,
            spiking_input_layer=x.spikes_from,
            spike_macs=int(spike_macs),
            calls=calls,
            form=form,
            dense_macs=int(dense_macs),
            factorised_macs=None if fact is None else int(fact.macs),
        )

    @staticmethod
    def _int8_spec(name: str, layer: Int8Layer, dense_macs: int, calls: int, source: str | None) -> LayerSpec:
        """How an int8 layer runs; ``source``: the LIF whose spikes it reads (None: a stem reading input codes)."""
        return LayerSpec(
            name=name,
            kind=layer.kind,
            variant=ExportVariant.DENSE,
            macs=int(dense_macs),
            input_is_spikes=source is not None,
            spiking_input_layer=source,
            spike_macs=int(dense_macs),
            calls=calls,
            form=Form.DENSE,
            dense_macs=int(dense_macs),
            precision=Precision.INT8,
        )

    def emit_layer(self, name: str, m: nn.Module, x: Value) -> str:
        graph = self.graph
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return _name(x)
        x = self.value(x)
        if isinstance(m, BATCHNORMS):
            ops = self.ops
            scale, shift = batchnorm_affine(ops, m, m.num_features, name)
            dims = (-1,) + (1,) * (len(x.shape) - 1)
            scale_name = ops.output(graph, ops.reshape(scale, dims, f"{name}.scale_dims"), f"{name}.scale")
            shift_name = ops.output(graph, ops.reshape(shift, dims, f"{name}.shift_dims"), f"{name}.shift")
            return graph.op("Add", [graph.op("Mul", [_name(x), scale_name], name), shift_name], name)
        if isinstance(m, nn.MaxPool2d) and not m.return_indices and pool_geometry(m)[3] == 1:
            k, s, p, _ = pool_geometry(m)

            def max_pool(source: str, hint: str) -> str:
                return graph.op(
                    "MaxPool",
                    [source],
                    hint,
                    kernel_shape=[k, k],
                    strides=[s, s],
                    pads=[p] * 4,
                    ceil_mode=int(m.ceil_mode),
                )

            if self.int8_form == Int8Form.INTEGER and self.int8 is not None and _name(x) in self._fired:
                # a LIF's spikes pooled as uint8 (1 byte, the max of 0/1 values in any type): what int8 readers
                # take; the float spikes are cast from them where a float layer reads them
                spikes = uint8_spikes(graph, self._uint8, _name(x), self._fired[_name(x)], name)
                pooled = max_pool(spikes, f"{name}.uint8")
                y = graph.op("Cast", [pooled], name, to=TensorProto.FLOAT)
                self._uint8[y] = pooled
                return y
            return max_pool(_name(x), name)
        if isinstance(m, nn.AvgPool2d) and m.divisor_override is None:
            k, s, p, _ = pool_geometry(m)
            return graph.op(
                "AveragePool",
                [_name(x)],
                name,
                kernel_shape=[k, k],
                strides=[s, s],
                pads=[p] * 4,
                ceil_mode=int(m.ceil_mode),
                count_include_pad=int(m.count_include_pad),
            )
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            return graph.op("GlobalAveragePool", [_name(x)], name)
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return graph.op("Flatten", [_name(x)], name, axis=1)
        raise UnsupportedModuleError(f"cannot export {name} ({m!r}): no ONNX translation for it")

    def emit_add(self, a: Value, b: Value) -> str:
        graph, nhwc = self.graph, _name(a) in self._nhwc or _name(b) in self._nhwc
        an, bn = (self.nhwc(_name(a)), self.nhwc(_name(b))) if nhwc else (_name(a), _name(b))
        if an in self._steps or bn in self._steps:  # part by part, as the conv wrote it and the LIF reads it
            bands = self._bands[an if an in self._steps else bn]
            parts = [graph.op("Add", [at, bt], "add") for at, bt in zip(self._parts(an, bands), self._parts(bn, bands))]
            y = self._whole(parts, bands, "add")
        else:
            y = graph.op("Add", [an, bn], "add")
        if nhwc:
            self._nhwc.add(y)
        return y

    def _whole(self, parts: list[str], bands: int, hint: str) -> str:
        """The per-step tensor [T*N, H, W, C] of ``parts`` (t-major, ``bands`` bands of rows per step: their
        Concat along H, then along the steps), recorded as its parts."""
        graph, per_step = self.graph, parts
        if bands > 1:
            per_step = [graph.op("Concat", parts[i : i + bands], hint, axis=1) for i in range(0, len(parts), bands)]
        y = concat_steps(graph, per_step, hint)
        self._steps[y], self._bands[y] = parts, bands
        return y

    def _parts(self, name: str, bands: int) -> list[str]:
        """Per-step ``name`` as T x ``bands`` parts (:meth:`_whole`): its own, or Splits along the steps and H (of
        its 1-byte fire maps, then cast, for a LIF's spikes)."""
        if name in self._steps and self._bands[name] == bands:
            return self._steps[name]
        graph, fired = self.graph, self._fired.get(name)
        parts = step_slices(graph, fired or name, False, self.steps, f"{name}.parts")
        if bands > 1:
            parts = [
                band
                for part in parts
                for band in graph.op("Split", [part], f"{name}.bands", outputs=bands, axis=1, num_outputs=bands)
            ]
        if fired is not None:
            parts = [graph.op("Cast", [part], f"{name}.parts", to=TensorProto.FLOAT) for part in parts]
        return parts

    def emit_repeat(self, x: Value) -> str:
        return repeat_steps(self.graph, self.nchw(_name(x)), len(x.shape), self.steps)

    def emit_lif(self, name: str, m: LIF, x: Value) -> str:
        """The LIF recurrence of :mod:`gee_deploy.neurons` over the T slices, plus the layer's spike count
        (:func:`.steps.spikes_and_count`: exact while T x neurons < 2^24, 25,088 for SmallNet's largest layer).

        In a graph with int8 layers in the integer form the fire maps are cast to uint8 here (what an int8 reader
        takes) and the count is :func:`.steps.integer_count`, on the int8 GEMM kernel: the same integers, and the
        float spikes are left out of the graph when no float layer reads them (docs/export.md, "Spike counts").
        The QDQ form keeps the float count: MatMulInteger is onnxruntime's alone.
        """
        graph, steps = self.graph, self.steps
        xs = self._steps.get(_name(x)) or step_slices(graph, _name(x), x.static, steps, name)
        bands = self._bands.get(_name(x), 1) if _name(x) in self._steps else 1  # independent neurons: one by one
        ops = GraphOps(graph, name)
        parts = [""] * len(xs)  # the fire maps, t-major as ``xs``
        for band in range(bands):
            v = state_names(name)[0] if self.streaming else None  # None: at rest (the start of a sequence)
            for t in range(steps):
                h = charge(ops, v, xs[t * bands + band], m.tau, m.v_reset)
                spike = parts[t * bands + band] = fire(ops, h, m.v_threshold)
                if t < steps - 1 or self.streaming:
                    if self.streaming and t == steps - 1:
                        ops.out_name = state_names(name)[1]
                    v = reset(ops, h, spike, m.v_threshold, m.v_reset)
        fired = parts
        if bands > 1:
            fired = [
                graph.op("Concat", parts[i : i + bands], f"{name}.fire", axis=1) for i in range(0, len(parts), bands)
            ]
        neurons = int(np.prod(x.shape))
        if self.int8 is None or self.int8_form != Int8Form.INTEGER:  # QDQ graphs: no onnxruntime-only op
            fire_maps, spikes, count = spikes_and_count(graph, fired, tuple(x.shape), name)
        else:
            fire_maps = concat_steps(graph, fired, f"{name}.fired")
            spikes = graph.op("Cast", [fire_maps], f"{name}.spikes", to=TensorProto.FLOAT)
            self._uint8[spikes] = graph.op("Cast", [fire_maps], f"{name}.uint8", to=TensorProto.UINT8)
            count = integer_count(graph, self._uint8[spikes], steps, neurons, name)
            if _name(x) in self._nhwc:  # elementwise: the spikes keep the layout of the membrane input
                self._nhwc.add(spikes)
            if steps > 1:  # each part's float spikes, for a residual add taken part by part
                self._steps[spikes] = [graph.op("Cast", [f], f"{name}.spikes", to=TensorProto.FLOAT) for f in parts]
                self._bands[spikes] = bands
        self._fired[spikes] = fire_maps
        self.counts.append(count)
        return spikes


def write_graph(
    model: SpikingNet,
    choose: Chooser,
    options: ExportOptions,
    *,
    storage: Storage = Storage.FOLDED,
    streaming: bool = False,
    checkpoint_sha256: str = "",
):
    """The ONNX ModelProto of eval-mode SpikingNet ``model`` and its :class:`~gee_deploy.spec.ModelSpec`.

    Args:
        model: a zoo model (``stem``, ``body``, ``mean``, ``std``, ``timesteps``, ``num_classes``); its class
            names and dataset (:func:`~gee_deploy.checkpoint.model_origin`) are recorded in the spec.
        choose: picks dense or factorised for each genetic layer.
        options: the export's options: the opset (>= 18) and the variant (recorded in the spec; its int8
            policy says which spike-reading layers get int8 weights: :func:`.choose.make_int8_chooser`)
            and the int8 form that spells them (:class:`~gee_deploy.kinds.Int8Form`).
        storage: "genetic" keeps the stored parameters and the initializer-only subgraph that computes the
            weights from them; "folded" stores the computed weights (:mod:`gee_deploy.export.weights`).
        streaming: one timestep per call with the membrane potentials as graph inputs and outputs.
        checkpoint_sha256: recorded in the spec.

    Raises:
        UnsupportedModuleError: a module or operation has no translation.
    """
    class_names, dataset = model_origin(model)
    int8 = make_int8_chooser(options.variant)
    w = OnnxWriter(model, choose, streaming, int8, options.int8_form or Int8Form.INTEGER)
    y = w.walk()
    graph = w.graph
    write_outputs(graph, w.nchw(_name(y)), y.static, w.steps, model.num_classes, w.counts)
    spec = w.spec(
        class_names=class_names,
        dataset=dataset,
        checkpoint_sha256=checkpoint_sha256,
        variant=options.variant.name,
        storage=storage,
    )
    n, c, s = BATCH_DIM, model.in_channels, model.image_size
    inputs = [tensor_info(INPUT_NAME, [n, c, s, s])]
    outputs = [tensor_info(LOGITS, [n, model.num_classes]), tensor_info(SPIKE_COUNTS, [n, len(w.counts)])]
    for v_in, v_out, shape in zip(spec.state_inputs, spec.state_outputs, w.state_shapes):
        inputs.append(tensor_info(v_in, [n] + shape))
        outputs.append(tensor_info(v_out, [n] + shape))
    proto = graph.model(inputs, outputs, options.opset, spec.to_metadata())  # the int8 scales: computed by the graph
    return (proto, spec) if storage == Storage.GENETIC else folded_with_scales(proto, spec)


def folded_with_scales(proto: onnx.ModelProto, spec: ModelSpec) -> tuple[onnx.ModelProto, ModelSpec]:
    """``proto`` folded (:func:`fold_constants`), and ``spec`` as folded storage with every int8 layer's
    ``weight_scales`` read from the folded graph (the float32 values the graph applies), in its metadata."""
    folded = fold_constants(proto)
    values = {t.name: t for t in folded.graph.initializer}
    layers = tuple(
        replace(l, weight_scales=tuple(numpy_helper.to_array(values[scale_name(l.name)]).reshape(-1).tolist()))
        if l.precision == Precision.INT8
        else l
        for l in spec.layers
    )
    spec = replace(spec, storage=Storage.FOLDED, layers=layers)
    set_metadata(folded, spec.to_metadata())
    return folded, spec
