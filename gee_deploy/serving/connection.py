"""What uvicorn has no setting for, per HTTP connection: the one module that goes past uvicorn's public API.

uvicorn times out idle keep-alive connections (``timeout_keep_alive``) and bounds its graceful shutdown
(``timeout_graceful_shutdown``), but:

* nothing times out a client that sends half a request and waits: ``timeout_keep_alive`` runs only between
  requests, and an ASGI app or middleware first hears of a request once its headers are complete
  (``--timeout-request-start`` is an open item of https://github.com/Kludex/uvicorn/issues/157, and
  https://github.com/Kludex/uvicorn/pull/1685, which added it, was closed unmerged);
* its shutdown closes the listener and then, at once, every connection that is between two requests. A client
  whose next request is already on the wire reads a reset instead of an answer, so a SIGTERM under load fails
  requests that the server could have answered.

:func:`protocol_class` adds both by composition. ``uvicorn.Config(http=...)`` takes an ``asyncio.Protocol``
class; uvicorn builds one per connection. Ours builds uvicorn's own httptools protocol with the arguments it is
given and stands between it and the event loop, through asyncio's documented ``Protocol`` and ``Transport``
interfaces only (nothing of uvicorn's protocol but those), and:

* reads the request stream a second time with ``httptools`` (its public parser; only the message begin and
  complete callbacks) to know when each request starts and when it has arrived whole. A request not whole
  ``request_timeout_s`` after it started (or after the connection opened) is answered 408 (the response framed
  by ``h11``) unless an answer has begun, and the connection is closed;
* holds back a close uvicorn asks for on a connection with nothing to send once the listening socket is closed
  (the drain): for ``idle_grace_s`` a request already on its way is read, answered with ``Connection: close``
  (the app adds it from ``on_drain`` on) and the connection closed after it; idle ones close when the grace ends;
* sends the writes of one event-loop step in one ``send``: uvicorn writes a response's head and body separately,
  and as two TCP segments the client can wait for its delayed ACK (40 ms on Linux).

What this relies on beyond uvicorn's documented API (tested with the uvicorn versions in :data:`TESTED_UVICORN`,
pinned in pyproject.toml; tests/test_server.py fails when one breaks):

1. uvicorn builds one ``http=`` object per connection, with arguments we pass on unchanged;
2. ``Config(http="httptools").load()`` leaves uvicorn's protocol class in ``Config.http_protocol_class`` (checked
   when :func:`protocol_class` runs: a clear RuntimeError, not a silent fallback);
3. uvicorn's protocol, after asking to close a connection that was between requests, still answers a request
   that then arrives on it (it keeps no state of having asked);
4. uvicorn closes the listening socket (asyncio's ``Server.close``) before it closes idle connections.

docs/serving.md explains why, and what a maintainer does when an upgrade breaks one of them.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable

import h11
import httptools
import uvicorn

__all__ = ["TESTED_UVICORN", "Drain", "protocol_class"]

TESTED_UVICORN = ("0.30.6", "0.54.0")


class Drain:
    """What the connections of one server share for its shutdown.

    Args:
        listener: the listening socket the server was given; closed (``fileno() == -1``) means draining.
        idle_grace_s: how long a connection between requests may still bring one when the drain starts.
        on_drain: called once, when the first such connection is held open (the app says Connection: close).
    """

    def __init__(self, listener: socket.socket, idle_grace_s: float, on_drain: Callable[[], None]):
        self.listener, self.idle_grace_s, self._on_drain = listener, idle_grace_s, on_drain
        self.connections: set[_Connection] = set()
        self.started = False

    @property
    def draining(self) -> bool:
        return self.listener.fileno() == -1

    def start(self) -> None:
        if not self.started:
            self.started = True
            self._on_drain()

    def close_all(self) -> None:
        """Close every connection still open (the drain's time is up)."""
        for conn in list(self.connections):
            conn.close_now()


def protocol_class(app, request_timeout_s: float, drain: Drain) -> type[asyncio.Protocol]:
    """The ``uvicorn.Config(http=...)`` class: uvicorn's httptools protocol with a request deadline, a graceful
    close while draining and coalesced writes.

    Args:
        app: the ASGI app (only to let uvicorn resolve its protocol class).
        request_timeout_s: seconds a client has to send a whole request.
        drain: the server's shared drain state.

    Raises:
        RuntimeError: this uvicorn no longer resolves its protocol class as tested.
    """
    probe = uvicorn.Config(app, http="httptools", ws="none", lifespan="off", log_config=None)
    probe.load()
    inner = getattr(probe, "http_protocol_class", None)
    if not (isinstance(inner, type) and issubclass(inner, asyncio.Protocol)):
        raise RuntimeError(
            f"uvicorn {uvicorn.__version__} does not resolve its HTTP protocol as gee-deploy expects "
            f"(tested with {', '.join(TESTED_UVICORN)}); see docs/serving.md"
        )
    return type(
        "GeeHttpProtocol", (_Connection,), {"inner_class": inner, "request_timeout": request_timeout_s, "drain": drain}
    )


def timeout_response(seconds: float) -> bytes:
    """The 408 Request Timeout (RFC 9110, section 15.5.9) a stalled client reads before its connection closes,
    framed by h11, whose server state machine allows an answer before a request has arrived."""
    body = json.dumps({"error": f"the request was not received within {seconds:g} s"}).encode()
    conn = h11.Connection(h11.SERVER)
    head = h11.Response(
        status_code=408,
        reason=b"Request Timeout",
        headers=[
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ],
    )
    return conn.send(head) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())


class _Connection(asyncio.Protocol):
    """One connection: uvicorn's protocol inside, the event loop outside (see the module docstring)."""

    inner_class: type[asyncio.Protocol]
    request_timeout: float
    drain: Drain

    def __init__(self, *args, **kwargs):
        self._inner = self.inner_class(*args, **kwargs)
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        if hasattr(self._parser, "set_dangerous_leniencies"):  # as uvicorn's parser, so both read the same stream
            self._parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._deadline: asyncio.TimerHandle | None = None
        self._held: asyncio.TimerHandle | None = None
        self._waiting = False  # a request has begun and no answer to it has been written yet
        self._answered = False  # bytes were written since the current request began
        self._keep_alive: bool | None = None  # what the last answer's head said (None: no answer yet)
        self._lost = False

    # -- asyncio.Protocol: the event loop calls these; each goes on to uvicorn's protocol --

    def connection_made(self, transport) -> None:
        self._transport = transport
        self.drain.connections.add(self)
        self._arm()
        self._inner.connection_made(_Transport(self, transport))

    def data_received(self, data: bytes) -> None:
        if self._parser is not None:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade:  # no longer request/response: uvicorn's business alone
                self._parser = None
                self._disarm()
            except httptools.HttpParserError:  # uvicorn's parser fails the same way and answers 400
                self._parser = None
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received()

    def connection_lost(self, exc) -> None:
        self._lost = True
        self.drain.connections.discard(self)
        self._disarm()
        if self._held is not None:
            self._held.cancel()
        self._pending.clear()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- httptools callbacks of our own parser --

    def on_message_begin(self) -> None:
        self._waiting, self._answered = True, False
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()

    # -- the request deadline --

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self._loop.call_later(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    @property
    def _open_transport(self) -> asyncio.Transport:
        """The transport; set by ``connection_made``, which asyncio calls before anything else."""
        assert self._transport is not None
        return self._transport

    def _expired(self) -> None:
        self._deadline = None
        if self._open_transport.is_closing():
            return
        if not self._answered:  # else an answer has begun (a 413 sent before the body arrived): just close
            self._pending.append(timeout_response(self.request_timeout))
        self.close_now()

    # -- what uvicorn's protocol does to its transport --

    def write(self, data) -> None:
        if self._waiting:  # the head of the answer (uvicorn writes it in one piece)
            head = _ResponseHead(data)
            if head.status is None or head.status >= 200:  # not 100 Continue, after which the answer follows
                self._keep_alive = head.keep_alive
                self._waiting, self._answered = False, True
        else:
            self._answered = True
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._open_transport.is_closing():
                self._open_transport.write(data)

    def close(self) -> None:
        """uvicorn closes the connection: at once when not draining or after an answer that said Connection:
        close; while draining, a connection whose last answer kept it open is held for the drain's grace (its
        client may be sending the next request right now)."""
        if self._lost:
            return
        if not self.drain.draining or self._keep_alive is False:
            self.close_now()
        elif self._held is None:
            self.drain.start()
            self._held = self._loop.call_later(self.drain.idle_grace_s, self._grace_over)

    def _grace_over(self) -> None:
        if not self._waiting:  # a request that arrived in time is answered, then uvicorn closes
            self.close_now()

    def close_now(self) -> None:
        self._disarm()
        self._flush()
        self._open_transport.close()


class _ResponseHead:
    """An answer's status and whether it keeps the connection open, read from its head by httptools' response
    parser (``should_keep_alive``: HTTP/1.1 without ``Connection: close``)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.status: int | None = None
        self.keep_alive: bool | None = None
        self._parser = httptools.HttpResponseParser(self)
        try:
            self._parser.feed_data(bytes(data))
        except httptools.HttpParserError:
            pass

    def on_headers_complete(self) -> None:
        self.status, self.keep_alive = self._parser.get_status_code(), self._parser.should_keep_alive()


class _Transport:
    """The transport uvicorn's protocol sees: writes and closes go through the connection, the rest (peer
    address, flow control) straight to asyncio's transport."""

    def __init__(self, conn: _Connection, transport: asyncio.Transport):
        self._conn, self._transport = conn, transport

    def write(self, data) -> None:
        self._conn.write(data)

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self._conn.write(chunk)

    def close(self) -> None:
        self._conn.close()

    def __getattr__(self, name):
        return getattr(self._transport, name)
