"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``) on ``grpc.aio``.

Built on the protos and stubs that ``tritonclient[grpc]`` ships (``tritonclient.grpc.service_pb2``,
``service_pb2_grpc``, and ``model_config_pb2`` through :mod:`gee_deploy.triton_config`), so the stock
``tritonclient.grpc`` client speaks to it. It runs on the HTTP server's event loop and shares its
:class:`~.service.ModelService`: one batcher, one concurrency limit, one set of statistics. Implemented: ServerLive, ServerReady, ModelReady, ServerMetadata,
ModelMetadata, ModelConfig, ModelStatistics, ModelInfer (``raw_input_contents`` or ``fp32_contents``; the
``classification`` output parameter) and the bidirectional ModelStreamInfer (each request answered in one
``ModelStreamInferResponse``, an error as its ``error_message``, as Triton does; requests of one sequence on one
stream run in the order they were sent, requests of different sequences concurrently, so they batch). A
streaming graph's steps carry Triton's sequence parameters (``sequence_id`` as ``int64_param``,
``uint64_param`` or ``string_param``; ``sequence_start`` / ``sequence_end`` as ``bool_param``). Everything else
(repository, shared memory, trace, log) answers UNIMPLEMENTED. Protocol errors are answered with the gRPC status
their class states (:class:`~.codec.ProtocolError`), the one the HTTP status derives from.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .codec import (
    VERSION,
    Decoded,
    InvalidInput,
    NotReady,
    ProtocolError,
    check_input,
    classify,
    extensions,
    model_metadata,
    parse_sequence,
    reject_unsupported,
    select_outputs,
    serialize_bytes,
    served_outputs,
    tensor_from_bytes,
    tensor_from_values,
)
from .service import ModelService

__all__ = ["InferenceServicer", "start_grpc", "decode_grpc_request"]


def _rpc(endpoint: str):
    """Count the call in the Prometheus metrics and turn protocol errors into gRPC statuses."""

    def wrap(method):
        @functools.wraps(method)
        async def call(self, request, context):
            start = time.perf_counter()
            try:
                response = await method(self, request, context)
            except ProtocolError as e:
                code = grpc.StatusCode[e.grpc_code]
                self.service.metrics.observe_request("grpc", endpoint, code.name, error=True)
                await context.abort(code, str(e))
            self.service.metrics.observe_request(
                "grpc", endpoint, "OK", time.perf_counter() - start if endpoint == "infer" else None
            )
            return response

        return call

    return wrap


def _param_value(p: service_pb2.InferParameter):
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def decode_grpc_request(request: service_pb2.ModelInferRequest, spec) -> Decoded:
    """A ``ModelInferRequest`` as a :class:`~.codec.Decoded`, checked like the REST body.

    Raises:
        InvalidInput: naming the field; Unsupported: shared memory or sequence parameters.
    """
    reject_unsupported(dict(request.parameters), "parameters", sequences=spec.streaming)
    sequence = parse_sequence({k: _param_value(v) for k, v in request.parameters.items()}) if spec.streaming else None
    for i, t in enumerate(request.inputs):
        reject_unsupported(dict(t.parameters), f"inputs.{i}.parameters")
    for i, o in enumerate(request.outputs):
        reject_unsupported(dict(o.parameters), f"outputs.{i}.parameters")
    if len(request.inputs) != 1:
        raise InvalidInput(f"inputs: this model takes exactly one tensor, got {len(request.inputs)}")
    t = request.inputs[0]
    shape = list(t.shape)
    check_input(t.name, t.datatype, shape, "inputs.0", spec)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(f"raw_input_contents: holds {len(request.raw_input_contents)} tensors for 1 input")
        x = tensor_from_bytes(request.raw_input_contents[0], shape, "raw_input_contents.0", spec)
    elif t.HasField("contents"):
        x = tensor_from_values(np.asarray(t.contents.fp32_contents, dtype=np.float32), shape, "inputs.0.contents", spec)
    else:
        raise InvalidInput("inputs.0: has neither contents nor raw_input_contents")
    asked = None
    if request.outputs:
        asked = []
        for i, o in enumerate(request.outputs):
            k = _param_value(o.parameters["classification"]) if "classification" in o.parameters else 0
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise InvalidInput(f"outputs.{i}.parameters.classification: must be a non-negative integer, got {k!r}")
            asked.append((o.name, True, k))
    return Decoded(x, select_outputs(asked, True, served_outputs(spec)), request.id or None, sequence)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The OIP gRPC methods over one :class:`ModelService`."""

    def __init__(self, service: ModelService):
        self.service = service

    @_rpc("health")
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @_rpc("health")
    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.service.ready)

    @_rpc("model_ready")
    async def ModelReady(self, request, context):
        self.service.check_model(request.name, request.version)
        return service_pb2.ModelReadyResponse(ready=self.service.ready)

    @_rpc("server")
    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(
            name="gee-deploy", version=VERSION, extensions=extensions(self.service.spec)
        )

    @_rpc("model")
    async def ModelMetadata(self, request, context):
        self.service.check_model(request.name, request.version)
        meta = model_metadata(self.service.name, self.service.spec)
        return json_format.ParseDict(meta, service_pb2.ModelMetadataResponse(), ignore_unknown_fields=True)

    @_rpc("config")
    async def ModelConfig(self, request, context):
        self.service.check_model(request.name, request.version)
        return service_pb2.ModelConfigResponse(config=self.service.model_config())

    @_rpc("stats")
    async def ModelStatistics(self, request, context):
        if request.name:
            self.service.check_model(request.name, request.version)
        stats = {"model_stats": [self.service.stats.as_dict(self.service.name, VERSION)]}
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

    @_rpc("infer")
    async def ModelInfer(self, request, context):
        return await self._infer(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Triton's bidirectional stream: every request gets one response, an error as ``error_message``
        (the stream goes on). Requests of one sequence wait for the previous one of the same sequence on this
        stream, so a client may send a sequence's steps without waiting for their answers."""
        answers: asyncio.Queue = asyncio.Queue()
        last_of: dict = {}  # sequence_id parameter -> the task of its latest request on this stream

        async def answer(request, before: asyncio.Task | None) -> None:
            if before is not None:
                await asyncio.wait([before])
            start = time.perf_counter()
            try:
                response = service_pb2.ModelStreamInferResponse(infer_response=await self._infer(request))
                self.service.metrics.observe_request("grpc", "stream_infer", "OK", time.perf_counter() - start)
            except ProtocolError as e:
                self.service.metrics.observe_request("grpc", "stream_infer", e.grpc_code, error=True)
                response = service_pb2.ModelStreamInferResponse(
                    error_message=str(e),
                    infer_response=service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id),
                )
            await answers.put(response)

        def forget(key, task: asyncio.Task) -> None:  # a long stream keeps only the requests still running
            tasks.discard(task)
            if last_of.get(key) is task:
                del last_of[key]

        tasks: set[asyncio.Task] = set()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    key = (
                        _param_value(request.parameters["sequence_id"]) if "sequence_id" in request.parameters else None
                    )
                    task = asyncio.ensure_future(answer(request, last_of.get(key) if key else None))
                    if key:
                        last_of[key] = task
                    tasks.add(task)
                    task.add_done_callback(functools.partial(forget, key))
                if tasks:
                    await asyncio.wait(set(tasks))
            finally:
                await answers.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
        finally:
            reader.cancel()

    async def _infer(self, request) -> service_pb2.ModelInferResponse:
        s = self.service
        s.check_model(request.model_name, request.model_version)
        if not s.ready:
            raise NotReady("the server is shutting down; this call was not run, retry elsewhere")

        def encode(decoded: Decoded, result) -> service_pb2.ModelInferResponse:
            response = service_pb2.ModelInferResponse(model_name=s.name, model_version=VERSION, id=decoded.id or "")
            values = s.values(result)
            for o in decoded.outputs:
                arr = values[o.name]
                if o.class_count:
                    arr = classify(arr, o.class_count, s.spec.class_names)
                    raw, datatype = serialize_bytes(arr), "BYTES"
                else:
                    raw, datatype = np.ascontiguousarray(arr, dtype="<f4").tobytes(), "FP32"
                out = response.outputs.add(name=o.name, datatype=datatype)
                out.shape.extend(arr.shape)
                response.raw_output_contents.append(raw)
            return response

        return await s.infer(lambda: decode_grpc_request(request, s.spec), encode)


async def start_grpc(
    service: ModelService, host: str, port: int, max_message_bytes: int
) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC service on the running event loop; returns (server, bound port).

    Raises:
        RuntimeError: the port cannot be bound (grpc's own error).
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound
