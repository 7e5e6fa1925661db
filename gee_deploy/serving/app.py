"""The HTTP side of `gee-deploy serve`: Starlette routes speaking KServe v2 REST plus Triton's extensions.

Endpoints (each model path also under ``/v2/models/{name}/versions/1``):

* ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready`` (503 while draining), ``GET /metrics`` (Prometheus).
* ``GET /v2/models/{name}`` (metadata), ``/ready``, ``/config`` (Triton model configuration), ``/stats`` and
  ``GET /v2/models/stats`` (Triton statistics).
* ``POST /v2/models/{name}/infer``: JSON tensors or Triton's binary tensor extension (the
  ``Inference-Header-Content-Length`` header, what ``tritonclient.http`` sends by default); an output's
  ``classification`` parameter returns the top-k as ``"score:index:label"`` (BYTES).
  A streaming graph's steps carry Triton's sequence parameters (``sequence_id``, ``sequence_start``,
  ``sequence_end``; docs/streaming.md).

The endpoints are the methods of :class:`Endpoints`; :data:`ROUTES` is the table of which path runs which.

Protocol errors from :mod:`.codec` (with the HTTP status each states, :func:`~.codec.http_status`) and
Starlette's 404/405 become answers in one place (:class:`_Edge`), with ``{"error": message}`` bodies. A body
over ``max_body_bytes`` gets 413 without being read; the connection stays open, so the server
reads past the rest of the body and the client, once done sending, reads the 413 (closing instead would
reset the connection under a client still writing: a broken pipe, not an answer). Once the server has
stopped listening (SIGTERM) every response carries ``Connection: close``; not before, or clients would
reconnect into a listener about to close and be reset.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route, Router

from ..triton_config import to_json
from .batcher import BatchResult
from .codec import (
    VERSION,
    Decoded,
    InvalidInput,
    PayloadTooLarge,
    ProtocolError,
    UnsupportedMediaType,
    decode_json_request,
    encode_json_response,
    http_status,
    model_metadata,
    server_metadata,
)
from .service import ModelService

__all__ = ["create_app", "Endpoints", "ROUTES"]

_CLIENT_GONE = 499  # nginx's "client closed request": recorded in metrics, never sent
_log = logging.getLogger("gee_deploy.serve")


class _Edge:
    """The ASGI app around the routes: maps errors to statuses (one place), counts requests in Prometheus,
    and says ``Connection: close`` while draining. A plain ASGI wrapper around Starlette's router: the
    ``Starlette`` application would add two middleware layers per request for what this does in one, and the
    event loop's time per request is what bounds the server's throughput (profiled under load)."""

    def __init__(self, router: Router, service: ModelService):
        self.router, self.service = router, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.router(scope, receive, send)
        scope["app"] = self.router  # with an app in scope, Starlette's routing raises 404/405 as HTTPException
        status = [_CLIENT_GONE]
        start = time.perf_counter()
        service = self.service

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if service.draining:
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        try:
            headers = None
            try:
                await self.router(scope, receive, send_wrapper)
                error = None
            except ProtocolError as e:
                error = (http_status(e), str(e))
            except HTTPException as e:
                path, headers = scope["path"], e.headers  # 405 carries Allow
                error = (
                    e.status_code,
                    f"no endpoint {path}"
                    if e.status_code == 404
                    else f"{scope['method']} is not allowed on {path}"
                    if e.status_code == 405
                    else e.detail,
                )
            except ClientDisconnect:  # the connection is gone: nothing to answer
                error = None
            except Exception as e:  # a bug: logged with its traceback, counted as a 500, the server goes on
                _log.exception("error while answering %s %s", scope["method"], scope["path"])
                error = (500, f"internal error: {type(e).__name__}")
            if error is not None and status[0] == _CLIENT_GONE:
                response = _json_response({"error": error[1]}, error[0])
                if headers:
                    response.headers.update(headers)
                await response(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = route.name if route is not None else "unknown"
            code = status[0]
            ok = code < 400
            service.metrics.observe_request(
                "http",
                endpoint,
                code,
                time.perf_counter() - start if ok and endpoint == "infer" else None,
                error=not ok,
            )


def _json_response(obj, status: int = 200) -> Response:
    return Response(json.dumps(obj).encode(), status, media_type="application/json")


async def _not_found(scope, receive, send):
    raise HTTPException(404)


class Endpoints:
    """The HTTP endpoints of one served model, one method each; :data:`ROUTES` says which path runs which.

    Args:
        service: the model, its batcher, its counters (and a streaming graph's state table).
        max_body_bytes: larger infer bodies get 413.
    """

    def __init__(self, service: ModelService, max_body_bytes: int = 16 << 20):
        self.service, self.spec, self.max_body_bytes = service, service.spec, max_body_bytes
        self.config = to_json(service.model_config())

    def _model(self, request: Request) -> None:
        self.service.check_model(request.path_params["name"], request.path_params.get("version"))

    async def server(self, request: Request) -> Response:
        return _json_response(server_metadata(self.spec))

    async def live(self, request: Request) -> Response:
        return _json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        return _json_response({"ready": self.service.ready}, 200 if self.service.ready else 503)

    async def metadata(self, request: Request) -> Response:
        self._model(request)
        return _json_response(model_metadata(self.service.name, self.spec))

    async def model_ready(self, request: Request) -> Response:
        self._model(request)
        return _json_response(
            {"name": self.service.name, "ready": self.service.ready}, 200 if self.service.ready else 503
        )

    async def model_config(self, request: Request) -> Response:
        self._model(request)
        return _json_response(self.config)

    async def stats(self, request: Request) -> Response:
        if "name" in request.path_params:
            self._model(request)
        return _json_response({"model_stats": [self.service.stats.as_dict(self.service.name, VERSION)]})

    async def metrics(self, request: Request) -> Response:
        if self.service.sequences is not None:
            self.service.sequences.expire()  # idle sequences leave the live count without waiting for a step
        return Response(self.service.metrics.render(), media_type=self.service.metrics.content_type)

    async def infer(self, request: Request) -> Response:
        self._model(request)
        headers = request.headers
        if headers.get("content-encoding", "identity").lower() not in ("identity", ""):
            raise UnsupportedMediaType(
                f"Content-Encoding {headers['content-encoding']!r}: compressed request bodies are not supported"
            )
        header_text = headers.get("inference-header-content-length")
        header_length: int | None = None
        if header_text is not None:
            try:
                header_length = int(header_text)
            except ValueError:
                raise InvalidInput("Inference-Header-Content-Length must be an integer") from None
        body = await _read_body(request, self.max_body_bytes)
        return await self.service.infer(lambda: decode_json_request(body, header_length, self.spec), self._encode)

    def _encode(self, decoded: Decoded, result: BatchResult) -> Response:
        service = self.service
        head, tail = encode_json_response(
            service.name, decoded.outputs, service.values(result), decoded.id, self.spec.class_names
        )
        if tail is None:
            return Response(head, media_type="application/json")
        return Response(
            head + tail,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(head))},
        )


_MODEL_PATHS = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
# (path, Endpoints method, HTTP methods, name in the request metrics); the infer paths are matched first.
ROUTES = (
    [(p + "/infer", "infer", ["POST"], "infer") for p in _MODEL_PATHS]
    + [
        ("/v2", "server", None, "server"),
        ("/v2/health/live", "live", None, "health"),
        ("/v2/health/ready", "ready", None, "health"),
        ("/metrics", "metrics", None, "metrics"),
        ("/v2/models/stats", "stats", None, "stats"),
    ]
    + [
        (p + suffix, method, None, name)
        for p in _MODEL_PATHS
        for suffix, method, name in (
            ("", "metadata", "model"),
            ("/ready", "model_ready", "model_ready"),
            ("/config", "model_config", "config"),
            ("/stats", "stats", "stats"),
        )
    ]
)


def create_app(service: ModelService, max_body_bytes: int = 16 << 20):
    """The ASGI app for ``service``: :data:`ROUTES` over :class:`Endpoints`, inside the bookkeeping edge.

    Args:
        service: the model, its batcher and its counters.
        max_body_bytes: larger infer bodies get 413.
    """
    endpoints = Endpoints(service, max_body_bytes)
    routes = [
        Route(path, getattr(endpoints, method), methods=methods, name=name) for path, method, methods, name in ROUTES
    ]
    return _Edge(Router(routes, default=_not_found), service)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or :class:`PayloadTooLarge` as soon as it is known to exceed ``limit`` bytes (from
    Content-Length, before reading; or while reading a chunked body)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
