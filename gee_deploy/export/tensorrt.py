"""TensorRT: a static compatibility check of an ONNX graph (runs everywhere) and a plan builder.

The builder targets the TensorRT 10 and 11 Python APIs: explicit batch is the only mode (``create_network``
takes no EXPLICIT_BATCH flag any more), one optimisation profile spans batch 1..max on the ``input`` axis 0,
and a timing cache beside the plan makes rebuilds fast. TensorRT 11 removed weakly typed FP16
(``BuilderFlag.FP16``): there the graph is converted to float16 first (I/O kept float32) and the network is
built STRONGLY_TYPED.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..io import atomic_path
from ..spec import INPUT_NAME
from .errors import ExportError, TensorRTUnavailableError
from .weights import constant_nodes, fold_constants

__all__ = ["TENSORRT_ONNX_OPS", "compatibility_problems", "require_tensorrt", "build_plan", "to_float16"]

# ONNX operators TensorRT 10's parser supports (onnx-tensorrt docs/operators.md), minus the ones it only
# supports in narrow cases we would not emit anyway.
TENSORRT_ONNX_OPS = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid
HardSwish Hardmax Identity If InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod
Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad Pow QuantizeLinear RNN RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round
Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze
Where Xor
""".split()
)
_TRT_DTYPES = {
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.BFLOAT16,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.BOOL,
}
MAX_OPSET = 20  # the newest opset TensorRT 10.x parses


def compatibility_problems(model: onnx.ModelProto) -> list[str]:
    """What would stop TensorRT from parsing ``model``: ops, dtypes, non-batch dynamic dims, opset. [] = none.

    The graph is judged as :func:`build_plan` hands it to TensorRT's parser: with its initializer-only subgraph
    (the weights of ``genetic`` storage, computed in float64) folded first.
    """
    if constant_nodes(model.graph)[0]:
        model = fold_constants(model)
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > MAX_OPSET:
        problems.append(f"opset {opset} is newer than TensorRT's parser supports ({MAX_OPSET})")
    unsupported = sorted(
        {n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in TENSORRT_ONNX_OPS}
    )
    if unsupported:
        problems.append(f"operators TensorRT does not support: {', '.join(unsupported)}")
    bad = sorted(
        {TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer if t.data_type not in _TRT_DTYPES}
    )
    for v in list(model.graph.input) + list(model.graph.output):
        tt = v.type.tensor_type
        if tt.elem_type not in _TRT_DTYPES:
            bad.append(f"{v.name}:{TensorProto.DataType.Name(tt.elem_type)}")
        dims = list(tt.shape.dim)
        if not dims or not dims[0].dim_param:
            problems.append(f"{v.name}: axis 0 is not a dynamic batch axis")
        dynamic = [i for i, d in enumerate(dims[1:], 1) if not d.dim_value]
        if dynamic:
            problems.append(f"{v.name}: axes {dynamic} are not static (only the batch axis may be dynamic)")
    for n in model.graph.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i not in _TRT_DTYPES:
                bad.append(f"Cast to {TensorProto.DataType.Name(a.i)}")
    if bad:
        problems.append(f"dtypes TensorRT does not support: {', '.join(sorted(set(bad)))}")
    return problems


def require_tensorrt():
    """The ``tensorrt`` module, or one line saying it is not installed."""
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailableError(
            "TensorRT is not installed (pip install tensorrt, on a machine with an "
            "NVIDIA GPU); --format onnx works everywhere"
        ) from None
    return tensorrt


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of one of our graphs with float32 I/O (Cast after the inputs, before the outputs)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    graph = m.graph
    for t in graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for n in graph.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
    casts = []
    for v in graph.input:
        internal = f"{v.name}.fp16"
        for n in graph.node:
            n.input[:] = [internal if i == v.name else i for i in n.input]
        casts.append(onnx.helper.make_node("Cast", [v.name], [internal], to=TensorProto.FLOAT16))
    for v in graph.output:
        internal = f"{v.name}.fp16"
        for n in graph.node:
            n.output[:] = [internal if o == v.name else o for o in n.output]
            n.input[:] = [internal if i == v.name else i for i in n.input]
        casts.append(onnx.helper.make_node("Cast", [internal], [v.name], to=TensorProto.FLOAT))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts[: len(graph.input)] + nodes + casts[len(graph.input) :])
    del graph.value_info[:]
    return m


def build_plan(
    model: onnx.ModelProto,
    out: str | os.PathLike,
    max_batch_size: int = 64,
    fp16: bool = False,
    opt_batch: int | None = None,
    workspace_gib: float = 2.0,
) -> Path:
    """Build a TensorRT plan of ``model`` at ``out`` (atomically) with a timing cache ``out``.cache beside it."""
    trt = require_tensorrt()
    model = fold_constants(model)  # genetic storage: TensorRT parses the folded weights, not the float64 subgraph
    problems = compatibility_problems(model)
    if problems:
        raise ExportError("graph is not TensorRT-compatible: " + "; ".join(problems))
    major = int(trt.__version__.split(".")[0])
    out = Path(out)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if fp16 and major >= 11:  # no weakly typed FP16 any more: the graph carries the types
        model = to_float16(model)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse the graph: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16 and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    profile = builder.create_optimization_profile()
    opt = opt_batch or max(1, max_batch_size // 2)
    for inp in model.graph.input:
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] if inp.name != INPUT_NAME else shape
        profile.set_shape(inp.name, (1, *dims), (opt, *dims), (max_batch_size, *dims))
    config.add_optimization_profile(profile)
    cache_path = out.with_name(out.name + ".cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT failed to build the plan (see the TensorRT log above)")
    with atomic_path(out) as tmp:
        tmp.write_bytes(bytes(plan))
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return out
