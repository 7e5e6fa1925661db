"""Triton's model configuration of one gee model: the one builder behind ``config.pbtxt`` and ``/config``.

:func:`model_config` builds a ``ModelConfig`` message of Triton's ``model_config.proto`` (the Python classes
``tritonclient[grpc]`` ships as ``tritonclient.grpc.model_config_pb2``). The Triton repository exporter writes it
as ``config.pbtxt`` (:func:`to_pbtxt`); ``gee-deploy serve`` answers ``GET /v2/models/{name}/config`` with its
JSON form (:func:`to_json`) and gRPC ``ModelConfig`` with the message itself. What they say can therefore not
drift apart: the same platform, batch axis, tensors, dynamic batching and ``gee.timesteps`` parameter.

Dynamic batching is ``max_queue_delay_microseconds`` alone, what gee-deploy's own batcher does: the largest batch
up to ``max_batch_size`` that arrives within the delay. Triton's batcher guide ("Recommended Configuration
Process", https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/batcher.html) starts from
exactly this and adds ``preferred_batch_size`` only for models measured to need it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .spec import INPUT_NAME, LOGITS, SPIKE_COUNTS, ModelSpec

if TYPE_CHECKING:
    import onnx
    from tritonclient.grpc.model_config_pb2 import ModelConfig

__all__ = ["PLATFORM", "BACKEND", "DEFAULT_MAX_QUEUE_DELAY_MS", "CPU_ACCELERATORS", "model_config", "to_pbtxt",
           "to_json"]

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# the onnxruntime backend's CPU execution accelerators (model_config.proto, ExecutionAccelerators: "openvino",
# no parameters): the model then runs on onnxruntime's OpenVINO execution provider inside Triton
CPU_ACCELERATORS = ("openvino",)
DEFAULT_MAX_QUEUE_DELAY_MS = 2.0  # `gee-deploy serve --max-delay-ms`'s default; exported repositories use it too

# ONNX TensorProto element type -> Triton DataType name (model_config.proto)
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 2: "TYPE_UINT8", 3: "TYPE_INT8",
                   6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL"}


def _tensors(spec: ModelSpec, graph: onnx.GraphProto | None) -> tuple[list, list]:
    """(inputs, outputs) as (name, Triton data type, dims without the batch axis)."""
    if graph is not None:
        def describe(values):
            out = []
            for v in values:
                tt = v.type.tensor_type
                if tt.elem_type not in _ONNX_TO_TRITON:
                    raise ValueError(f"graph tensor {v.name!r} has ONNX element type {tt.elem_type}, which has no "
                                     "Triton data type here")
                out.append((v.name, _ONNX_TO_TRITON[tt.elem_type], [d.dim_value for d in tt.shape.dim[1:]]))
            return out

        return describe(graph.input), describe(graph.output)
    if spec.streaming:
        raise ValueError("a streaming model's membrane tensors have shapes only its graph knows: pass graph=")
    return ([(INPUT_NAME, "TYPE_FP32", list(spec.input_shape))],
            [(LOGITS, "TYPE_FP32", [spec.num_classes]), (SPIKE_COUNTS, "TYPE_FP32", [len(spec.spiking_layers)])])


def model_config(name: str, spec: ModelSpec, max_batch_size: int,
                 max_queue_delay_ms: float = DEFAULT_MAX_QUEUE_DELAY_MS, graph: onnx.GraphProto | None = None,
                 instance_kind: str | None = None, cpu_accelerator: str | None = None) -> ModelConfig:
    """Triton's ``ModelConfig`` for a gee model: onnxruntime, batch axis 0, dynamic batching.

    Args:
        name: the model name (Triton's directory name, the URL's ``{name}``).
        spec: the model's contract (input shape, class names, spiking layers, T).
        max_batch_size: largest batch in samples (> 0: dims below leave out the batch axis, as Triton wants).
        max_queue_delay_ms: how long the first request of a batch waits for others.
        graph: the ONNX graph, when at hand: tensors are read from it (a streaming graph's membrane inputs and
            outputs, fp16 types); without it they follow the spec's non-streaming contract.
        instance_kind: ``"KIND_CPU"`` / ``"KIND_GPU"`` for one instance of that kind; None leaves the instance
            group to Triton (one instance per GPU, or on the CPU when there is none).
        cpu_accelerator: one of :data:`CPU_ACCELERATORS` (``optimization { execution_accelerators {
            cpu_execution_accelerator: [{ name: "openvino" }] } }``), or None for onnxruntime's CPU provider.

    Returns:
        ``tritonclient.grpc.model_config_pb2.ModelConfig``.

    Raises:
        ValueError: ``max_batch_size`` < 1, a negative delay, a tensor type Triton cannot take, a streaming
            spec without its graph, or an unknown ``cpu_accelerator``.
    """
    from tritonclient.grpc import model_config_pb2 as pb

    if max_batch_size < 1 or max_queue_delay_ms < 0:
        raise ValueError(f"max_batch_size must be >= 1 and max_queue_delay_ms >= 0, got {max_batch_size}, "
                         f"{max_queue_delay_ms}")
    if cpu_accelerator not in (None, *CPU_ACCELERATORS):
        raise ValueError(f"unknown CPU execution accelerator {cpu_accelerator!r}; use one of "
                         f"{', '.join(CPU_ACCELERATORS)}")
    inputs, outputs = _tensors(spec, graph)
    config = pb.ModelConfig(name=name, platform=PLATFORM, backend=BACKEND, max_batch_size=max_batch_size)
    for field, tensors in ((config.input, inputs), (config.output, outputs)):
        for tensor_name, data_type, dims in tensors:
            field.add(name=tensor_name, data_type=pb.DataType.Value(data_type), dims=dims)
    config.dynamic_batching.max_queue_delay_microseconds = int(round(max_queue_delay_ms * 1000))
    if instance_kind is not None:
        config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.Kind.Value(instance_kind))
    if cpu_accelerator is not None:
        config.optimization.execution_accelerators.cpu_execution_accelerator.add(name=cpu_accelerator)
    config.parameters[ModelSpec.key("timesteps")].string_value = str(spec.timesteps)
    return config


def to_pbtxt(config: ModelConfig) -> str:
    """``config.pbtxt`` text (protobuf's text format, which Triton reads)."""
    from google.protobuf import text_format

    return text_format.MessageToString(config, use_short_repeated_primitives=True)


def to_json(config: ModelConfig) -> dict:
    """The JSON form Triton's HTTP ``/config`` returns: proto field names, and 64-bit integers (dims, delays) as
    JSON numbers, not the strings of protobuf's canonical JSON mapping."""
    from google.protobuf import json_format

    return _numbers(config, json_format.MessageToDict(config, preserving_proto_field_name=True))


def _numbers(message, d: dict) -> dict:
    from google.protobuf.descriptor import FieldDescriptor as F

    for field in message.DESCRIPTOR.fields:
        if field.name not in d:
            continue
        if field.cpp_type in (F.CPPTYPE_INT64, F.CPPTYPE_UINT64):
            d[field.name] = [int(v) for v in d[field.name]] if _repeated(field) else int(d[field.name])
        elif field.cpp_type == F.CPPTYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            value = getattr(message, field.name)
            if _repeated(field):
                d[field.name] = [_numbers(m, x) for m, x in zip(value, d[field.name])]
            else:
                d[field.name] = _numbers(value, d[field.name])
    return d


def _repeated(field) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6.31 deprecates ``label``
        return field.is_repeated
    return field.label == field.LABEL_REPEATED
