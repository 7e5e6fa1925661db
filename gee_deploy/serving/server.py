"""`gee-deploy serve`: the Open Inference Protocol over onnxruntime with dynamic batching, on production parts.

One process, one asyncio event loop, one batcher thread:

* HTTP: the ASGI app of :mod:`.app` (Starlette routes) under uvicorn (httptools parser), KServe v2 REST + Triton's binary
  tensor, model configuration, statistics and classification extensions; Prometheus metrics at ``/metrics``.
* gRPC (``grpc_port``): the OIP ``GRPCInferenceService`` of :mod:`.grpc_service` on ``grpc.aio``, on the same
  loop, sharing the :class:`~.service.ModelService` (batcher, concurrency limit, statistics).

Lifecycle as orchestrators expect (docs/design.md, "Serving lifecycle"): on SIGTERM or SIGINT readiness turns
false, the listeners close
(no new connections), requests in flight finish and are answered with ``Connection: close``, idle keep-alive
connections get ``idle_grace_s`` to send one last request, new gRPC calls get UNAVAILABLE for ``idle_grace_s``
(clients move on) before gRPC stops, all bounded by ``drain_s``; then the process exits 0. A second SIGINT forces exit. A client that has not sent a whole
request ``request_timeout_s`` after starting it (headers or body stalled) gets 408 and is disconnected;
idle keep-alive connections close after ``keep_alive_s``.
"""
from __future__ import annotations

import asyncio
import re
import signal
import socket
import threading

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .app import create_app
from .grpc_service import start_grpc
from .runtimes import Runtime
from .service import ModelService

__all__ = ["InferenceServer", "ready_line", "parse_ready_line"]

_READY = re.compile(r"at http://[^:/\s]+:(\d+)/\S*?(?:; gRPC at [^:\s]+:(\d+))?;")


def ready_line(name: str, model: str, url: str, grpc_address: str | None) -> str:
    """The line ``gee-deploy serve`` prints on stderr once it accepts requests (scripts wait for it)."""
    grpc = f"; gRPC at {grpc_address}" if grpc_address else ""
    return f"serving {name} ({model}) at http://{url}/v2/models/{name}/infer{grpc}; metrics at /metrics"


def parse_ready_line(line: str) -> tuple[int, int | None] | None:
    """(HTTP port, gRPC port or None) from a :func:`ready_line`; None when ``line`` is not one."""
    m = _READY.search(line)
    return (int(m[1]), int(m[2]) if m[2] else None) if m else None

_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n%s")


class _Coalescing:
    """A transport whose writes within one event-loop step leave in one ``send``.

    uvicorn writes a response's headers and body separately; as two segments the client wakes twice and, with
    Nagle on at its end, its delayed ACK can hold the second one 40 ms. The previous server measured that and
    sent one segment; this keeps it. Everything but ``write`` and ``close`` goes to the real transport.
    """

    def __init__(self, transport, loop):
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name):
        return getattr(self._transport, name)


class _TimedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with coalesced writes (:class:`_Coalescing`), a deadline for receiving each
    whole request (uvicorn times out only idle keep-alive connections), and the time of the last activity (for
    draining)."""

    request_timeout = 30.0

    def connection_made(self, transport) -> None:
        super().connection_made(_Coalescing(transport, self.loop))
        self.last_active = self.loop.time()
        self._message_cycle = None
        self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_cycle = None  # this message's cycle, once its headers are in
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._message_cycle = self.cycle

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def on_response_complete(self) -> None:
        self.last_active = self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        # 408 unless this message was already answered (a 413 sent early, its body still arriving)
        if self._message_cycle is None or not self._message_cycle.response_started:
            body = b'{"error": "the request was not received within %g s"}' % self.request_timeout
            self.transport.write(_TIMEOUT_RESPONSE % (len(body), body))
        self.transport.close()

    @property
    def idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete


class _Uvicorn(uvicorn.Server):
    """uvicorn's server with our drain: readiness first, then stop accepting, let requests finish, exit 0."""

    def __init__(self, config: uvicorn.Config, owner: InferenceServer):
        super().__init__(config)
        self.owner = owner
        self.ready_event = threading.Event()

    def handle_exit(self, sig, frame) -> None:
        # uvicorn records the signal and re-raises it after shutdown, so the process would die of SIGTERM
        # (exit 143); a drained server exits 0.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.owner.service.ready = False
            self.should_exit = True

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.owner.grpc_port is not None:
            try:
                self.owner.grpc, self.owner.grpc_port = await start_grpc(
                    self.owner.service, self.owner.host, self.owner.grpc_port, self.owner.max_body)
            except RuntimeError as e:  # grpc cannot bind
                self.owner.startup_error = e
                self.should_exit = True
        self.ready_event.set()

    async def shutdown(self, sockets=None) -> None:
        owner = self.owner
        owner.service.ready = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + owner.drain_s
        grpc_until = loop.time() + owner.idle_grace_s if owner.grpc is not None else 0.0
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        owner.service.draining = True
        state = self.server_state
        # In-flight requests finish. HTTP responses say Connection: close, so the client reconnects elsewhere;
        # a connection idle longer than idle_grace_s is closed. gRPC has no such header: for idle_grace_s new
        # calls get UNAVAILABLE from the service (never run, safe to retry) so clients leave before grpc's
        # stop(), which cancels calls that arrive while it runs.
        while ((state.connections or state.tasks or owner.service.inflight or loop.time() < grpc_until)
               and loop.time() < deadline and not self.force_exit):
            now = loop.time()
            for conn in list(state.connections):
                if getattr(conn, "idle", True) and now - getattr(conn, "last_active", 0.0) > owner.idle_grace_s:
                    conn.shutdown()
            await asyncio.sleep(0.02)
        for conn in list(state.connections):
            conn.shutdown()
        for task in list(state.tasks):
            task.cancel()
        if owner.grpc is not None:
            await owner.grpc.stop(max(0.0, deadline - loop.time()))


class InferenceServer:
    """KServe v2 REST (and, with ``grpc_port``, OIP gRPC) for one model.

    Args:
        runtime: what answers (an :class:`OrtRuntime` for ``gee-deploy serve``).
        name: the model name in URLs.
        host: bind address; loopback unless told otherwise.
        port: HTTP port; 0 picks a free one (see ``.port``).
        grpc_port: gRPC port (0 picks one; see ``.grpc_port`` after start); None serves no gRPC.
        max_batch: largest dynamic batch in samples.
        max_delay_ms: how long the first request of a batch waits for company.
        max_body_bytes: larger request bodies get 413 (gRPC: RESOURCE_EXHAUSTED).
        infer_timeout_s: seconds a request may wait for its batch before a 503.
        request_timeout_s: seconds a client has to send a whole request before a 408 and disconnect.
        keep_alive_s: idle keep-alive connections close after this.
        max_concurrency: inference requests in flight before 503 (gRPC: UNAVAILABLE).
        drain_s: bound on the graceful shutdown.
        idle_grace_s: while draining, how long an idle keep-alive connection may still send a request.

    Raises:
        OSError: the HTTP or gRPC port cannot be bound.
        ValueError: a bad name or limit.
    """

    def __init__(self, runtime: Runtime, name: str = "gee", host: str = "127.0.0.1", port: int = 8000,
                 grpc_port: int | None = None, max_batch: int = 32, max_delay_ms: float = 2.0,
                 max_body_bytes: int = 16 << 20, infer_timeout_s: float = 30.0, request_timeout_s: float = 30.0,
                 keep_alive_s: float = 5.0, max_concurrency: int = 256, drain_s: float = 10.0,
                 idle_grace_s: float = 1.0):
        if request_timeout_s <= 0 or drain_s < 0 or max_body_bytes < 1:
            raise ValueError(f"request_timeout_s must be > 0, drain_s >= 0, max_body_bytes >= 1; got "
                             f"{request_timeout_s}, {drain_s}, {max_body_bytes}")
        self.service = ModelService(runtime, name, max_batch, max_delay_ms, max_concurrency, infer_timeout_s)
        self.name, self.host, self.grpc_port, self.max_body = name, host, grpc_port, max_body_bytes
        self.drain_s, self.idle_grace_s = drain_s, idle_grace_s
        self.grpc = None
        self.startup_error: Exception | None = None
        self.sock = socket.create_server((host, port), backlog=1024)
        if grpc_port:  # a busy gRPC port fails here with one OSError, not later inside grpc's C core (which logs)
            try:
                socket.create_server((host, grpc_port)).close()
            except OSError:
                self.sock.close()
                raise
        protocol = type("TimedProtocol", (_TimedProtocol,), {"request_timeout": request_timeout_s})
        config = uvicorn.Config(create_app(self.service, max_body_bytes), loop="asyncio", http=protocol,
                                lifespan="off", log_level="warning", access_log=False, proxy_headers=False,
                                timeout_keep_alive=keep_alive_s, server_header=False)
        self._uv = _Uvicorn(config, self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def serve_forever(self, on_ready=None) -> None:
        """Serve on this thread until SIGTERM/SIGINT, drain, return. ``on_ready()`` runs once both
        protocols listen."""
        if on_ready is not None:
            threading.Thread(target=self._notify, args=(on_ready,), daemon=True).start()
        try:
            self._uv.run(sockets=[self.sock])
        finally:
            self.service.close()
        if self.startup_error is not None:
            raise OSError(f"cannot serve gRPC on {self.host}:{self.grpc_port}: {self.startup_error}")

    def _notify(self, on_ready) -> None:
        self._uv.ready_event.wait()
        if self.startup_error is None:
            on_ready()

    def start(self, timeout_s: float = 30.0) -> InferenceServer:
        """Serve in a background thread (tests, notebooks); ``close()`` drains and stops it."""
        self._thread = threading.Thread(target=self._uv.run, kwargs={"sockets": [self.sock]}, name="gee-serve",
                                        daemon=True)
        self._thread.start()
        if not self._uv.ready_event.wait(timeout_s) or self.startup_error is not None:
            self.close()
            raise OSError(f"the server did not start: {self.startup_error or 'timeout'}")
        return self

    def close(self) -> None:
        """Drain (bounded by ``drain_s``) and stop; the batcher finishes what it holds."""
        if self._thread is not None:
            self.service.ready = False
            self._uv.should_exit = True
            self._thread.join(timeout=self.drain_s + 10)
            self._thread = None
        else:
            self.sock.close()
        self.service.close()

    def __enter__(self) -> InferenceServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

