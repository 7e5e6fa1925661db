"""`gee-deploy serve`: the Open Inference Protocol over onnxruntime with dynamic batching, on production parts.

One process, one batcher thread, and one asyncio event loop on a thread of its own:

* HTTP: the ASGI app of :mod:`.app` (Starlette routes) under ``uvicorn.Server`` (httptools parser), KServe v2
  REST + Triton's binary tensor, model configuration, statistics and classification extensions; Prometheus
  metrics at ``/metrics``.
* gRPC (``grpc_port``): the OIP ``GRPCInferenceService`` of :mod:`.grpc_service` on ``grpc.aio``, on the same
  loop, sharing the :class:`~.service.ModelService` (batcher, concurrency limit, statistics).

Lifecycle as orchestrators expect (docs/design.md, "Serving lifecycle"): on SIGTERM or SIGINT (our handlers, on the main thread; uvicorn installs
none off it) readiness turns false and uvicorn is asked to exit (``Server.should_exit``). uvicorn closes the
listener, answers requests in flight with ``Connection: close`` and waits for connections to finish, up to
``drain_s`` (``Config.timeout_graceful_shutdown``); connections between two requests get ``idle_grace_s`` to
bring one more (:mod:`.connection`). New gRPC calls get UNAVAILABLE from the service for at least ``idle_grace_s``
(clients move on) before gRPC stops, within the same ``drain_s``; then the process exits 0. A second SIGINT
forces exit. A client that has not sent a whole request ``request_timeout_s`` after starting it (headers or body
stalled) gets 408 and is disconnected (:mod:`.connection`); idle keep-alive connections close after
``keep_alive_s`` (``Config.timeout_keep_alive``). Everything else is uvicorn's ``Config`` and ``Server``: their
options and ``serve``, and the ``should_exit`` / ``force_exit`` / ``started`` attributes that uvicorn's own
signal handler and its maintainers' run-on-a-thread recipe use.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import threading
import time

import uvicorn

from .app import create_app
from .config import ServeConfig
from .connection import Drain, protocol_class
from .grpc_service import start_grpc
from .runtimes import Runtime
from .service import ModelService

__all__ = ["InferenceServer", "ServeConfig", "ready_line", "parse_ready_line"]

_READY = re.compile(r"at http://[^:/\s]+:(\d+)/\S*?(?:; gRPC at [^:\s]+:(\d+))?;")


def ready_line(name: str, model: str, url: str, grpc_address: str | None) -> str:
    """The line ``gee-deploy serve`` prints on stderr once it accepts requests (scripts wait for it)."""
    grpc = f"; gRPC at {grpc_address}" if grpc_address else ""
    return f"serving {name} ({model}) at http://{url}/v2/models/{name}/infer{grpc}; metrics at /metrics"


def parse_ready_line(line: str) -> tuple[int, int | None] | None:
    """(HTTP port, gRPC port or None) from a :func:`ready_line`; None when ``line`` is not one."""
    m = _READY.search(line)
    return (int(m[1]), int(m[2]) if m[2] else None) if m else None


class InferenceServer:
    """KServe v2 REST (and, with ``config.grpc_port``, OIP gRPC) for one model.

    Args:
        runtime: what answers (an :class:`OrtRuntime` for ``gee-deploy serve``; any :class:`Runtime`).
        config: the name, ports and limits, checked when it was built (:class:`~.config.ServeConfig`).

    Raises:
        OSError: the HTTP or gRPC port cannot be bound.
    """

    def __init__(self, runtime: Runtime, config: ServeConfig | None = None):
        config = config or ServeConfig()
        self.config = config
        self.service = ModelService(runtime, config)
        self.name, self.host, self.grpc_port = config.name, config.host, config.grpc_port
        self.drain_s, self.idle_grace_s = config.drain_s, config.idle_grace_s
        self.grpc = None
        self.startup_error: BaseException | None = None
        self.sock = socket.create_server((config.host, config.port), backlog=1024)
        self._port = self.sock.getsockname()[1]
        if config.grpc_port:  # a busy gRPC port fails here with one OSError, not later inside grpc's C core
            try:
                socket.create_server((config.host, config.grpc_port)).close()
            except OSError:
                self.sock.close()
                raise
        app = create_app(self.service, config.max_body_bytes)
        self._drain = Drain(self.sock, config.idle_grace_s, on_drain=self._on_drain)
        uv_config = uvicorn.Config(
            app,
            http=protocol_class(app, config.request_timeout_s, self._drain),
            ws="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            # uvicorn annotates these int; it hands them to asyncio timeouts, which take float s
            timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]
            timeout_graceful_shutdown=config.drain_s,  # type: ignore[arg-type]
        )
        self._uv = uvicorn.Server(uv_config)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop_at: float | None = None  # time.monotonic() of the first stop request

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def serve_forever(self, on_ready=None) -> None:
        """Serve until SIGTERM/SIGINT, drain, return (the CLI's main thread). ``on_ready()`` runs once both
        protocols listen.

        Raises:
            OSError: the server could not start (gRPC cannot bind).
        """
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            if on_ready is not None:
                on_ready()
            thread = self._thread
            assert thread is not None  # start() made it
            while thread.is_alive():  # a timed join, so the signal handlers run promptly
                thread.join(0.5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._thread = None
            self.service.close()

    def _on_signal(self, sig, frame) -> None:
        if self._stop_at is not None and sig == signal.SIGINT:
            self._uv.force_exit = True  # a second Ctrl-C: stop waiting
        self.stop()

    def stop(self) -> None:
        """Begin the drain (any thread): readiness false, uvicorn stops accepting and finishes what it holds."""
        self.service.ready = False
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._uv.should_exit = True

    def _on_drain(self) -> None:
        self.service.draining = True  # the listener is closed: every HTTP answer now says Connection: close

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 -- reported by start(), never lost on a thread
            self.startup_error = self.startup_error or e
        finally:
            self._ready.set()

    async def _main(self) -> None:
        if self.grpc_port is not None:
            try:
                self.grpc, self.grpc_port = await start_grpc(
                    self.service, self.host, self.grpc_port, self.config.max_body_bytes
                )
            except RuntimeError as e:  # grpc cannot bind
                self.startup_error = e
                return
        serving = asyncio.ensure_future(self._uv.serve(sockets=[self.sock]))
        try:
            while not (self._uv.started or serving.done()):  # as uvicorn's maintainers run it on a thread
                await asyncio.sleep(0.005)
            self._ready.set()
            await serving
        finally:
            self._drain.close_all()
            if self.grpc is not None:
                stop_at = self._stop_at if self._stop_at is not None else time.monotonic()
                # gRPC has no Connection: close: for idle_grace_s new calls get UNAVAILABLE from the service (never
                # run, safe to retry) so clients leave before grpc's stop(), which cancels calls arriving meanwhile.
                await asyncio.sleep(max(0.0, stop_at + self.idle_grace_s - time.monotonic()))
                await self.grpc.stop(max(0.0, stop_at + self.drain_s - time.monotonic()))

    def start(self, timeout_s: float = 30.0) -> InferenceServer:
        """Serve on a background thread (the CLI, tests, notebooks); ``close()`` drains and stops it.

        Raises:
            OSError: the server did not start within ``timeout_s`` (or gRPC cannot bind).
        """
        self._thread = threading.Thread(target=self._run, name="gee-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self.startup_error is not None:
            error = self.startup_error
            self.close()
            if self.grpc_port is not None and isinstance(error, RuntimeError):
                raise OSError(f"cannot serve gRPC on {self.host}:{self.grpc_port}: {error}")
            raise OSError(f"the server did not start: {error or 'timeout'}")
        return self

    def close(self) -> None:
        """Drain (bounded by ``drain_s``) and stop; the batcher finishes what it holds."""
        if self._thread is not None:
            self.stop()
            self._thread.join(timeout=self.drain_s + 10)
            self._thread = None
        else:
            self.sock.close()
        self.service.close()

    def __enter__(self) -> InferenceServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
