"""The Open Inference Protocol's payloads: KServe v2 JSON, Triton's binary tensor extension, Triton's
classification extension, and the metadata and statistics documents of one model (its configuration is
:mod:`gee_deploy.triton_config`, shared with the Triton exporter).

Parsing raises what is wrong with a request as a :class:`ProtocolError` subclass naming the field
(``inputs.0.shape: ...``). Each class states its gRPC status, and its HTTP status follows from that
(:func:`http_status`), as Triton derives both from one error code; the HTTP app and the gRPC service turn them
into answers at their edges, after KServe's ``errors.py``. Request bodies are validated by pydantic models
(after KServe's ``protocol/rest/v2_datamodels.py``), so a body of any JSON shape either parses or becomes one
:class:`InvalidInput`.

Sources: KServe v2 protocol (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/),
Triton's extensions ``binary_tensor_data``, ``classification``, ``model_configuration`` and ``statistics``
(https://github.com/triton-inference-server/server/tree/main/docs/protocol).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from ..errors import InputError
from ..spec import INPUT_NAME, LOGITS, OUTPUT_NAMES, SPIKE_COUNTS
from ..triton_config import PLATFORM
from .runtimes import validate_input

__all__ = [
    "ProtocolError",
    "InvalidInput",
    "Unsupported",
    "UnsupportedMediaType",
    "ModelNotFound",
    "PayloadTooLarge",
    "ServerBusy",
    "NotReady",
    "InferenceTimeout",
    "http_status",
    "OutputRequest",
    "Decoded",
    "InferRequest",
    "decode_json_request",
    "check_input",
    "reject_unsupported",
    "tensor_from_bytes",
    "tensor_from_values",
    "select_outputs",
    "classify",
    "serialize_bytes",
    "encode_json_response",
    "server_metadata",
    "model_metadata",
    "EXTENSIONS",
    "VERSION",
    "SequenceStep",
    "UnknownSequence",
    "SequenceBusy",
    "TooManySequences",
    "parse_sequence",
    "served_outputs",
    "MEAN_LOGITS",
    "TOTAL_SPIKE_COUNTS",
]

VERSION = "1"  # the one model version this server has
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "statistics")
STREAMING_EXTENSIONS = ("sequence",)  # a streaming graph's server speaks Triton's sequence extension too
# Request parameters that belong to extensions this server does not implement: asking for them is a 400,
# not a silently different answer. The sequence parameters are read for a streaming graph (parse_sequence).
_UNSUPPORTED = {
    "shared_memory_region": "shared_memory",
    "shared_memory_byte_size": "shared_memory",
    "shared_memory_offset": "shared_memory",
    "sequence_id": "sequence",
    "sequence_start": "sequence",
    "sequence_end": "sequence",
}
_SEQUENCE_KEYS = ("sequence_id", "sequence_start", "sequence_end")
_STEP_INPUT = {"static": "the image, fed at every step", "frames": "this step's frame"}
# What a streaming graph's server adds to each step's answer: the running summary of the sequence so far.
MEAN_LOGITS = "mean_logits"  # [1, classes]: the mean of the step logits so far (at step T: the unrolled logits)
TOTAL_SPIKE_COUNTS = "total_spike_counts"  # [1, L]: the spikes so far (at step T: the unrolled spike_counts)


# ---- errors (mapped to HTTP / gRPC statuses at the edge) ----

# gRPC status -> HTTP status, as Triton maps its one error code to both protocols (triton-inference-server/server
# src/http_server.cc ``HttpCodeFromError``; gRPC's own table, grpc/doc/statuscodes.md, agrees on these). ABORTED
# (a sequence's step while its previous one runs) is 409 Conflict, as google.rpc.Code maps it.
_HTTP_FOR_GRPC = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "UNAVAILABLE": 503,
    "RESOURCE_EXHAUSTED": 429,
    "ABORTED": 409,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
}


class ProtocolError(Exception):
    """Base of everything a request can do wrong or the server can refuse; the message names the field.

    Each class states its gRPC status (``grpc_code``, a ``grpc.StatusCode`` name); its HTTP status follows from it
    (:func:`http_status`) unless HTTP has a more specific one (``http_code``). One statement per error, so the
    two protocols cannot disagree.
    """

    grpc_code = "INTERNAL"
    http_code: int | None = None


class InvalidInput(ProtocolError):
    """The request is malformed or does not fit the model."""

    grpc_code = "INVALID_ARGUMENT"


class Unsupported(InvalidInput):
    """The request asks for a protocol extension this server does not implement."""


class UnsupportedMediaType(InvalidInput):
    """The body is encoded in a way this server does not read, e.g. compressed."""

    http_code = 415


class ModelNotFound(ProtocolError):
    """No such model or version here."""

    grpc_code = "NOT_FOUND"


class PayloadTooLarge(ProtocolError):
    """The body exceeds the server's limit (gRPC's own code for an oversized message)."""

    grpc_code = "RESOURCE_EXHAUSTED"
    http_code = 413


class ServerBusy(ProtocolError):
    """More requests in flight than the concurrency limit. Triton answers its full queue the same way
    (UNAVAILABLE, HTTP 503: the request never ran, retrying is safe)."""

    grpc_code = "UNAVAILABLE"


class NotReady(ProtocolError):
    """The server is draining before exit and takes no new inference."""

    grpc_code = "UNAVAILABLE"


class InferenceTimeout(ProtocolError):
    """The batcher did not answer in time (Triton's queue timeout, "Request timeout expired", is UNAVAILABLE)."""

    grpc_code = "UNAVAILABLE"


class UnknownSequence(InvalidInput):
    """A step for a sequence that is not live (never started, ended, or expired) without ``sequence_start``;
    Triton answers it INVALID_ARGUMENT ("must specify the START flag on the first request of the sequence")."""


class SequenceBusy(ProtocolError):
    """A step of a sequence while its previous step is still running: steps of one sequence run one at a time,
    in order (HTTP 409 Conflict, gRPC ABORTED: retry once the previous step has been answered)."""

    grpc_code = "ABORTED"


class TooManySequences(ProtocolError):
    """``sequence_start`` while the state table holds ``max_sequences`` live sequences (HTTP 429, gRPC
    RESOURCE_EXHAUSTED: end a sequence or wait for idle ones to expire)."""

    grpc_code = "RESOURCE_EXHAUSTED"


def http_status(exc: ProtocolError) -> int:
    """The HTTP status of a protocol error: its own ``http_code``, else the one its gRPC status maps to."""
    return exc.http_code or _HTTP_FOR_GRPC[exc.grpc_code]


# ---- request schema ----

ParamValue = StrictStr | StrictInt | StrictFloat | StrictBool  # KServe: a $parameter is string, number or bool
NonNegInt = Annotated[StrictInt, Field(ge=0)]


class _Parameters(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, ParamValue]


class RequestParameters(_Parameters):
    binary_data_output: StrictBool = False


class InputParameters(_Parameters):
    binary_data_size: NonNegInt | None = None


class OutputParameters(_Parameters):
    binary_data: StrictBool | None = None
    classification: NonNegInt = 0  # tritonclient's InferRequestedOutput(class_count=k) sends this key


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    shape: list[NonNegInt]
    datatype: StrictStr
    parameters: InputParameters | None = None
    data: list[Any] | None = None  # flat or nested numbers; checked by numpy below


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    parameters: OutputParameters | None = None


class InferRequest(BaseModel):
    """A KServe v2 inference request body (the JSON part when the binary extension is used)."""

    model_config = ConfigDict(extra="forbid")
    id: StrictStr | None = None
    parameters: RequestParameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


def _field(loc) -> str:
    return ".".join(str(p) for p in loc) or "body"


def _validation_message(e: ValidationError) -> str:
    errors = e.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return f"request body is not valid JSON: {errors[0]['msg']}"
    parts = [f"{_field(err['loc'])}: {err['msg']}" for err in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def reject_unsupported(params: _Parameters | dict | None, where: str, sequences: bool = False) -> None:
    """Raise :class:`Unsupported` when ``params`` (a parsed parameters object or a key mapping) asks for an
    extension this server does not implement (shared memory; sequence batching unless ``sequences``)."""
    keys = params.keys() if isinstance(params, dict) else (params.model_extra or {}) if params is not None else ()
    for key in keys:
        if key in _UNSUPPORTED and not (sequences and key in _SEQUENCE_KEYS):
            raise Unsupported(f"{where}.{key}: the {_UNSUPPORTED[key]} extension is not implemented by this server")


# ---- Triton's sequence extension ----


@dataclass(frozen=True)
class SequenceStep:
    """One request's place in a sequence: the sequence id (uint64 or string, as Triton's ``sequence_id``) and
    the ``sequence_start`` / ``sequence_end`` flags."""

    id: int | str
    start: bool = False
    end: bool = False

    def __str__(self) -> str:
        return f"sequence {self.id!r}"


def parse_sequence(params: dict, where: str = "parameters") -> SequenceStep | None:
    """The :class:`SequenceStep` of a request's parameters (key -> value, JSON or gRPC), None without
    ``sequence_id``. Triton's rules: ``sequence_id`` an integer in 1..2^64-1 or a non-empty string (0 and ""
    mean "no sequence", what tritonclient sends when none is given); the flags booleans.

    Raises:
        InvalidInput: naming the parameter that is malformed.
    """
    sid = params.get("sequence_id")
    flags = {}
    for key in ("sequence_start", "sequence_end"):
        v = params.get(key, False)
        if not isinstance(v, bool):
            raise InvalidInput(f"{where}.{key}: must be a boolean, got {v!r}")
        flags[key] = v
    if sid is None or sid == 0 or sid == "":
        if flags["sequence_start"] or flags["sequence_end"]:
            raise InvalidInput(f"{where}.sequence_id: sequence_start and sequence_end need a sequence_id")
        return None
    if isinstance(sid, bool) or not isinstance(sid, int | str) or (isinstance(sid, int) and not 0 < sid < 1 << 64):
        raise InvalidInput(f"{where}.sequence_id: must be an integer in 1..2^64-1 or a non-empty string, got {sid!r}")
    if isinstance(sid, str) and len(sid) > 256:
        raise InvalidInput(f"{where}.sequence_id: a string id holds at most 256 characters, got {len(sid)}")
    return SequenceStep(sid, flags["sequence_start"], flags["sequence_end"])


def served_outputs(spec) -> tuple[str, ...]:
    """The outputs a request may ask for: the graph's, and for a streaming graph the running summary."""
    return OUTPUT_NAMES + ((MEAN_LOGITS, TOTAL_SPIKE_COUNTS) if spec.streaming else ())


def _classifiable(name: str) -> bool:
    return name in (LOGITS, MEAN_LOGITS)


# ---- decoded request (shared by the HTTP app and the gRPC service) ----


@dataclass(frozen=True)
class OutputRequest:
    """One requested output: its name, whether it travels as binary, and the top-k of the classification
    extension (0: the raw tensor)."""

    name: str
    binary: bool = False
    class_count: int = 0


@dataclass(frozen=True)
class Decoded:
    """A parsed inference request: the validated input float32 [N, C, H, W], the outputs to return, the id,
    and for a streaming graph the step's place in its sequence."""

    x: np.ndarray
    outputs: tuple[OutputRequest, ...]
    id: str | None = None
    sequence: SequenceStep | None = None


def check_input(name: str, datatype: str, shape: list[int], where: str, spec) -> int:
    """Check an input tensor's name, datatype and shape against the model; return its element count.

    Args:
        name, datatype, shape: as the request states them.
        where: the field path used in messages (``inputs.0``).
        spec: the model description (its ``input_shape`` [C, H, W]; a streaming graph's one step,
            ``step_input_shape``, with N = 1: a step holds one sample of one sequence).

    Raises:
        InvalidInput: naming the first field that does not fit.
    """
    if name != INPUT_NAME:
        raise InvalidInput(f"{where}.name: this model's input is {INPUT_NAME!r}, got {name!r}")
    if datatype != "FP32":
        raise InvalidInput(f"{where}.datatype: input datatype must be FP32, got {datatype!r}")
    want = [*spec.input_shape]
    if spec.streaming:
        if len(shape) != 1 + len(want) or list(shape[1:]) != want or shape[0] != 1:
            raise InvalidInput(
                f"{where}.shape: one step of this streaming model is [1, {', '.join(map(str, want))}] "
                f"(one step of one sequence; its input is {_STEP_INPUT[spec.step_input]}), got {list(shape)}"
            )
    elif len(shape) != 1 + len(want) or list(shape[1:]) != want or shape[0] < 1:
        raise InvalidInput(
            f"{where}.shape: input shape must be [N, {', '.join(map(str, want))}] with N >= 1, got {list(shape)}"
        )
    return math.prod(shape)  # Python ints: a hostile shape cannot overflow


def tensor_from_bytes(raw: bytes | memoryview, shape: list[int], where: str, spec) -> np.ndarray:
    """An FP32 tensor from its little-endian bytes (Triton binary extension, gRPC raw contents), validated."""
    count = 4 * math.prod(shape)
    if len(raw) != count:
        raise InvalidInput(f"{where}: binary input holds {len(raw)} bytes; shape {list(shape)} FP32 needs {count}")
    return _validated(np.frombuffer(raw, dtype="<f4").reshape(shape), spec)


def tensor_from_values(values, shape: list[int], where: str, spec) -> np.ndarray:
    """An FP32 tensor from JSON ``data`` (flat or nested numbers) or gRPC ``fp32_contents``, validated."""
    try:
        x = np.asarray(values)  # no dtype: strings, booleans and nulls must not pass as numbers
    except (ValueError, TypeError, OverflowError):  # ragged nesting
        x = None
    if x is None or x.dtype.kind not in "fiu":
        raise InvalidInput(f"{where}.data: must be a flat or nested list of numbers (int64 range)")
    with np.errstate(over="ignore"):  # beyond float32's range becomes Inf, which validation refuses
        x = x.astype(np.float32)
    count = math.prod(shape)
    if x.size != count:
        raise InvalidInput(f"{where}.data: holds {x.size} values; shape {list(shape)} needs {count}")
    return _validated(x.reshape(shape), spec)


def _validated(x: np.ndarray, spec) -> np.ndarray:
    try:
        return validate_input(np.ascontiguousarray(x, dtype=np.float32), spec)
    except InputError as e:
        raise InvalidInput(f"inputs.0: {e}") from None


def select_outputs(
    asked: list[tuple[str, bool, int]] | None, default_binary: bool, names: tuple[str, ...] = OUTPUT_NAMES
) -> tuple[OutputRequest, ...]:
    """The outputs to return: every output (as ``default_binary``) when none is named, else the named ones.

    Args:
        asked: (name, binary, class_count) per requested output, in request order; None = not given.
        default_binary: the request-level ``binary_data_output``.
        names: the outputs there are (:func:`served_outputs`).

    Raises:
        InvalidInput: an unknown or repeated name, or classification of an output other than the logits.
    """
    if asked is None:
        return tuple(OutputRequest(name, default_binary) for name in names)
    seen, out = set(), []
    for i, (name, binary, class_count) in enumerate(asked):
        if name not in names:
            raise InvalidInput(f"outputs.{i}.name: unknown output {name!r}; this model has {', '.join(names)}")
        if name in seen:
            raise InvalidInput(f"outputs.{i}.name: output {name!r} is requested twice")
        if class_count and not _classifiable(name):
            raise InvalidInput(
                f"outputs.{i}.parameters.classification: classification applies to "
                f"{' and '.join(repr(n) for n in names if _classifiable(n))} only, not {name!r}"
            )
        seen.add(name)
        out.append(OutputRequest(name, binary, class_count))
    return tuple(out)


def decode_json_request(body: bytes, header_length: int | None, spec) -> Decoded:
    """Parse a KServe v2 REST infer body (with Triton's binary extension when ``header_length`` is given).

    Args:
        body: the whole request body.
        header_length: the ``Inference-Header-Content-Length`` header (bytes of JSON before the binary
            tensors), or None.
        spec: the model description (``input_shape``).

    Raises:
        InvalidInput: naming the field (pydantic's location, e.g. ``inputs.0.parameters.binary_data_size``).
        Unsupported: the request asks for shared memory or sequence batching.
    """
    if header_length is not None and not 0 < header_length <= len(body):
        raise InvalidInput(f"Inference-Header-Content-Length {header_length} does not fit a body of {len(body)} bytes")
    try:
        req = InferRequest.model_validate_json(body if header_length is None else body[:header_length])
    except ValidationError as e:
        raise InvalidInput(_validation_message(e)) from None
    reject_unsupported(req.parameters, "parameters", sequences=spec.streaming)
    sequence = parse_sequence(req.parameters.model_extra or {}) if spec.streaming and req.parameters else None
    for i, t in enumerate(req.inputs):
        reject_unsupported(t.parameters, f"inputs.{i}.parameters")
    for i, o in enumerate(req.outputs or ()):
        reject_unsupported(o.parameters, f"outputs.{i}.parameters")
    if len(req.inputs) != 1:
        raise InvalidInput(f"inputs: this model takes exactly one tensor {INPUT_NAME!r}, got {len(req.inputs)}")
    t = req.inputs[0]
    check_input(t.name, t.datatype, t.shape, "inputs.0", spec)
    size = t.parameters.binary_data_size if t.parameters is not None else None
    if size is not None:
        if header_length is None:
            raise InvalidInput(
                "inputs.0.parameters.binary_data_size: given without an Inference-Header-Content-Length header"
            )
        if t.data is not None:
            raise InvalidInput("inputs.0: has both 'data' and binary_data_size")
        raw = memoryview(body)[header_length:]
        if size != len(raw):
            raise InvalidInput(f"inputs.0.parameters.binary_data_size: says {size} bytes, the body holds {len(raw)}")
        x = tensor_from_bytes(raw, t.shape, "inputs.0", spec)
    elif t.data is not None:
        x = tensor_from_values(t.data, t.shape, "inputs.0", spec)
    else:
        raise InvalidInput("inputs.0: has neither 'data' nor binary_data_size")
    default_binary = req.parameters.binary_data_output if req.parameters is not None else False
    asked = (
        None
        if req.outputs is None
        else [
            (
                o.name,
                default_binary
                if o.parameters is None or o.parameters.binary_data is None
                else o.parameters.binary_data,
                0 if o.parameters is None else o.parameters.classification,
            )
            for o in req.outputs
        ]
    )
    return Decoded(x, select_outputs(asked, default_binary, served_outputs(spec)), req.id, sequence)


# ---- responses ----


def classify(logits: np.ndarray, k: int, class_names) -> np.ndarray:
    """Triton's classification extension: the top ``k`` of each row as ``b"score:index:label"``.

    Args:
        logits: float32 [N, classes].
        k: classes to return per row; more than the model has returns them all (as Triton does).
        class_names: one per column (the graph metadata); an empty name gives ``score:index``.

    Returns:
        object array [N, min(k, classes)] of bytes, best first; ties keep the lower index first.
    """
    k = min(k, logits.shape[1])
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # [N, k]
    out = np.empty(order.shape, dtype=object)
    for r, row in enumerate(order):
        for c, j in enumerate(row.tolist()):
            label = class_names[j] if j < len(class_names) else ""
            out[r, c] = (f"{logits[r, j]:f}:{j}:{label}" if label else f"{logits[r, j]:f}:{j}").encode()
    return out


def serialize_bytes(values: np.ndarray) -> bytes:
    """Triton's BYTES tensor wire format: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(len(v).to_bytes(4, "little") + v for v in values.ravel().tolist())


def encode_json_response(
    model: str, outputs: tuple[OutputRequest, ...], values: dict[str, np.ndarray], request_id: str | None, class_names
) -> tuple[bytes, bytes | None]:
    """A KServe v2 REST infer response: (JSON header, binary tail or None when every output is JSON).

    ``values`` maps output names to float32 arrays; classification outputs become BYTES.
    """
    tensors, blobs = [], []
    for o in outputs:
        arr = values[o.name]
        if o.class_count:
            arr = classify(arr, o.class_count, class_names)
            t: dict[str, object] = {"name": o.name, "datatype": "BYTES", "shape": list(arr.shape)}
            if o.binary:
                blobs.append(serialize_bytes(arr))
            else:
                t["data"] = [v.decode() for v in arr.ravel().tolist()]
        else:
            arr = np.ascontiguousarray(arr, dtype="<f4")
            t = {"name": o.name, "datatype": "FP32", "shape": list(arr.shape)}
            if o.binary:
                blobs.append(arr.tobytes())
            else:
                t["data"] = arr.ravel().tolist()
        if o.binary:
            t["parameters"] = {"binary_data_size": len(blobs[-1])}
        tensors.append(t)
    head = {"model_name": model, "model_version": VERSION, "outputs": tensors}
    if request_id is not None:
        head["id"] = request_id
    return json.dumps(head).encode(), b"".join(blobs) if blobs else None


# ---- documents about the server and the model ----


def server_metadata(spec=None) -> dict:
    """``GET /v2`` (KServe v2): name, version and the extensions this server speaks (with ``sequence`` when it
    serves a streaming graph, ``spec``)."""
    return {"name": "gee-deploy", "version": VERSION, "extensions": extensions(spec)}


def extensions(spec=None) -> list[str]:
    """The protocol extensions a server of ``spec`` speaks."""
    return list(EXTENSIONS) + (list(STREAMING_EXTENSIONS) if spec is not None and spec.streaming else [])


def model_metadata(name: str, spec) -> dict:
    """``GET /v2/models/{name}``: inputs and outputs with a dynamic batch axis, plus what the graph says of
    itself (T, class names, spiking layers) as parameters (the gRPC form drops ``parameters``).

    A streaming graph's server takes one step per request (``[1, ...]``) and answers the step's ``logits`` and
    ``spike_counts`` plus the running summary, ``mean_logits`` and ``total_spike_counts``; its parameters say
    so (``streaming``, ``step_input``: "static" for an image fed at every step, "frames" for one frame per
    step; ``summary``: what each summary output holds)."""
    k, n = len(spec.class_names), len(spec.spiking_layers)
    batch = 1 if spec.streaming else -1
    outputs = [
        {"name": LOGITS, "datatype": "FP32", "shape": [batch, k]},
        {"name": SPIKE_COUNTS, "datatype": "FP32", "shape": [batch, n]},
    ]
    parameters = {
        "timesteps": spec.timesteps,
        "class_names": list(spec.class_names),
        "spiking_layers": list(spec.spiking_layers),
        "model_name": spec.model_name,
    }
    if spec.streaming:
        outputs += [
            {"name": MEAN_LOGITS, "datatype": "FP32", "shape": [1, k]},
            {"name": TOTAL_SPIKE_COUNTS, "datatype": "FP32", "shape": [1, n]},
        ]
        parameters.update(
            streaming=True,
            step_input=spec.step_input,
            summary={
                MEAN_LOGITS: "mean of the step logits since sequence_start (at step T: the unrolled graph's logits)",
                TOTAL_SPIKE_COUNTS: "spikes since sequence_start (at step T: the unrolled graph's spike_counts)",
            },
        )
    return {
        "name": name,
        "versions": [VERSION],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [batch, *spec.input_shape]}],
        "outputs": outputs,
        "parameters": parameters,
    }
