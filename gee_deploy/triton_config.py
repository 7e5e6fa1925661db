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

A streaming graph (one timestep per call, membranes as ``v_in.<lif>`` / ``v_out.<lif>`` graph I/O) is a stateful
model: its configuration has ``sequence_batching`` instead, with each membrane as Triton's implicit ``state``
(https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/implicit_state_management.html):
Triton keeps it per sequence, starts it from ``initial_state`` (zeros) at ``sequence_start`` and feeds the step's
``v_out`` back as the next step's ``v_in``, so the membranes are neither inputs nor outputs a client sees. The
graph needs no control input: the only thing a START would tell it (reset the membranes) is what the zero
initial state does, and the batch axis is elementwise, so an empty slot (READY false) changes no other row.
The ``oldest`` strategy batches steps of up to ``max_candidate_sequences`` sequences with the same queue delay as
``gee-deploy serve``; ``max_sequence_idle_microseconds`` is serve's ``--sequence-idle-s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .spec import INPUT_NAME, LOGITS, SPIKE_COUNTS, ModelSpec

if TYPE_CHECKING:
    import onnx
    from tritonclient.grpc.model_config_pb2 import ModelConfig

__all__ = [
    "PLATFORM",
    "BACKEND",
    "DEFAULT_MAX_QUEUE_DELAY_MS",
    "CPU_ACCELERATORS",
    "DEFAULT_MAX_SEQUENCES",
    "DEFAULT_SEQUENCE_IDLE_S",
    "Sequences",
    "model_config",
    "to_pbtxt",
    "to_json",
]

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# the onnxruntime backend's CPU execution accelerators (model_config.proto, ExecutionAccelerators: "openvino",
# no parameters): the model then runs on onnxruntime's OpenVINO execution provider inside Triton
CPU_ACCELERATORS = ("openvino",)
DEFAULT_MAX_QUEUE_DELAY_MS = 2.0  # `gee-deploy serve --max-delay-ms`'s default; exported repositories use it too
DEFAULT_MAX_SEQUENCES = 1024  # `gee-deploy serve --max-sequences`'s default (live sequences of a streaming graph)
# `--sequence-idle-s`'s default. Triton's own default is 1 s, for clients that stream without pause; 60 s lets a
# client that thinks between steps (a person with curl, a slow sensor) keep its sequence.
DEFAULT_SEQUENCE_IDLE_S = 60.0


@dataclass(frozen=True)
class Sequences:
    """A streaming graph's sequence batching: its membranes and the limits on live sequences.

    Attributes:
        state_shapes: ``v_in.<lif>`` -> per-sample membrane shape (the graph's own input shapes, batch axis off).
        max_sequences: sequences batched together (``oldest.max_candidate_sequences``).
        idle_s: seconds before an idle sequence is dropped (``max_sequence_idle_microseconds``).
    """

    state_shapes: dict[str, tuple[int, ...]]
    max_sequences: int = DEFAULT_MAX_SEQUENCES
    idle_s: float = DEFAULT_SEQUENCE_IDLE_S


# ONNX TensorProto element type -> Triton DataType name (model_config.proto)
_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
}


def _tensors(spec: ModelSpec, graph: onnx.GraphProto | None) -> tuple[list, list]:
    """(inputs, outputs) as (name, Triton data type, dims without the batch axis)."""
    if graph is not None:

        def describe(values):
            out = []
            for v in values:
                tt = v.type.tensor_type
                if tt.elem_type not in _ONNX_TO_TRITON:
                    raise ValueError(
                        f"graph tensor {v.name!r} has ONNX element type {tt.elem_type}, which has no "
                        "Triton data type here"
                    )
                out.append((v.name, _ONNX_TO_TRITON[tt.elem_type], [d.dim_value for d in tt.shape.dim[1:]]))
            return out

        states = set(spec.state_inputs) | set(spec.state_outputs)  # implicit state: not a client's tensors
        return (
            [t for t in describe(graph.input) if t[0] not in states],
            [t for t in describe(graph.output) if t[0] not in states],
        )
    return (
        [(INPUT_NAME, "TYPE_FP32", list(spec.input_shape))],
        [(LOGITS, "TYPE_FP32", [spec.num_classes]), (SPIKE_COUNTS, "TYPE_FP32", [len(spec.spiking_layers)])],
    )


def model_config(
    name: str,
    spec: ModelSpec,
    max_batch_size: int,
    max_queue_delay_ms: float = DEFAULT_MAX_QUEUE_DELAY_MS,
    graph: onnx.GraphProto | None = None,
    instance_kind: str | None = None,
    sequences: Sequences | None = None,
    cpu_accelerator: str | None = None,
) -> ModelConfig:
    """Triton's ``ModelConfig`` for a gee model: onnxruntime, batch axis 0, dynamic batching (a streaming graph:
    sequence batching with its membranes as implicit state).

    Args:
        name: the model name (Triton's directory name, the URL's ``{name}``).
        spec: the model's contract (input shape, class names, spiking layers, T).
        max_batch_size: largest batch in samples (> 0: dims below leave out the batch axis, as Triton wants).
        max_queue_delay_ms: how long the first request of a batch waits for others.
        graph: the ONNX graph, when at hand: tensors are read from it (a streaming graph's membrane inputs and
            outputs, fp16 types); without it they follow the spec's non-streaming contract.
        instance_kind: ``"KIND_CPU"`` / ``"KIND_GPU"`` for one instance of that kind; None leaves the instance
            group to Triton (one instance per GPU, or on the CPU when there is none).
        sequences: a streaming graph's membranes and limits; None for a streaming graph reads the membranes from
            ``graph`` with the default limits.
        cpu_accelerator: one of :data:`CPU_ACCELERATORS` (``optimization { execution_accelerators {
            cpu_execution_accelerator: [{ name: "openvino" }] } }``), or None for onnxruntime's CPU provider.

    Returns:
        ``tritonclient.grpc.model_config_pb2.ModelConfig``.

    Raises:
        ValueError: ``max_batch_size`` < 1, a negative delay, a tensor type Triton cannot take, a streaming
            spec with neither its graph nor ``sequences``, or an unknown ``cpu_accelerator``.
    """
    from tritonclient.grpc import model_config_pb2 as pb

    if max_batch_size < 1 or max_queue_delay_ms < 0:
        raise ValueError(
            f"max_batch_size must be >= 1 and max_queue_delay_ms >= 0, got {max_batch_size}, {max_queue_delay_ms}"
        )
    if cpu_accelerator not in (None, *CPU_ACCELERATORS):
        raise ValueError(
            f"unknown CPU execution accelerator {cpu_accelerator!r}; use one of {', '.join(CPU_ACCELERATORS)}"
        )
    inputs, outputs = _tensors(spec, graph)
    config = pb.ModelConfig(name=name, platform=PLATFORM, backend=BACKEND, max_batch_size=max_batch_size)
    for field, tensors in ((config.input, inputs), (config.output, outputs)):
        for tensor_name, data_type, dims in tensors:
            field.add(name=tensor_name, data_type=pb.DataType.Value(data_type), dims=dims)
    delay_us = int(round(max_queue_delay_ms * 1000))
    if spec.streaming:
        _sequence_batching(config.sequence_batching, spec, graph, sequences, delay_us)
    else:
        config.dynamic_batching.max_queue_delay_microseconds = delay_us
    if instance_kind is not None:
        config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.Kind.Value(instance_kind))
    if cpu_accelerator is not None:
        config.optimization.execution_accelerators.cpu_execution_accelerator.add(name=cpu_accelerator)
    config.parameters[ModelSpec.key("timesteps")].string_value = str(spec.timesteps)
    return config


def _sequence_batching(
    batching, spec: ModelSpec, graph: onnx.GraphProto | None, sequences: Sequences | None, delay_us: int
) -> None:
    """Fill ``ModelSequenceBatching``: oldest-first batching, the idle limit, one zero-initialised implicit state
    per LIF layer (``v_in.<lif>`` in, ``v_out.<lif>`` out, dims without the batch axis)."""
    from tritonclient.grpc import model_config_pb2 as pb

    if sequences is None:
        if graph is None:
            raise ValueError(
                "a streaming model's membrane tensors have shapes only its graph knows: pass graph= or sequences="
            )
        dims = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim[1:]) for v in graph.input}
        sequences = Sequences({name: dims[name] for name in spec.state_inputs})
    batching.max_sequence_idle_microseconds = int(round(sequences.idle_s * 1e6))
    batching.oldest.max_candidate_sequences = sequences.max_sequences
    batching.oldest.max_queue_delay_microseconds = delay_us
    for v_in, v_out in zip(spec.state_inputs, spec.state_outputs):
        shape = list(sequences.state_shapes[v_in])
        state = batching.state.add(input_name=v_in, output_name=v_out, data_type=pb.TYPE_FP32, dims=shape)
        state.initial_state.add(name="rest", data_type=pb.TYPE_FP32, dims=shape, zero_data=True)


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
