"""Connection limits for the HTTP ports: a request must arrive in full within bounded time, idle connections
are closed, and a process accepts at most a fixed number of connections at once.

uvicorn's own ``timeout_keep_alive`` only runs between a response and the next request's first byte: a
connection that never sends a byte, or sends its headers or body slowly, is kept open forever, and
``limit_concurrency`` answers 503 only once a request's headers have arrived. So each listener gets a
:class:`ConnectionGuard`, whose protocol classes (uvicorn's httptools and h11 protocols with a few hooks)
track the phase of each connection:

=========  =====================================================  =========================================
phase      deadline                                               when it passes
=========  =====================================================  =========================================
fresh      accepted + ``keep_alive_timeout``                      closed (reason ``idle``)
headers    first byte (or end of previous response) +             408, closed (reason ``header``)
           ``header_timeout``
body       headers complete + ``body_timeout`` + size /           408 unless the answer has started, closed
           ``body_min_rate`` (size: declared or received bytes)   (reason ``body``)
busy       none: the application is answering                     -
idle       end of response + ``keep_alive_timeout``               closed (reason ``keep_alive``)
closing    closed + ``LINGER_SECONDS``                            reset (its answer could not be sent)
=========  =====================================================  =========================================

Deadlines are checked by one timer per listener every ``tick`` seconds (nothing is armed per request), so a
connection is closed at most ``tick`` after its deadline. Connections beyond ``max_connections`` get a 503 and
are closed at once, before they hold a descriptor for long.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .telemetry import CONNECTIONS_OPEN, CONNECTIONS_REFUSED, CONNECTIONS_TIMED_OUT

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

__all__ = ["ConnectionGuard", "Limits", "body_deadline", "connection_cap", "declared_length"]

log = logging.getLogger("imrelay.connections")

REASONS = ("idle", "header", "body", "keep_alive")
# Descriptors kept free for everything else the process opens (NATS, the other listener, files, sockets
# to platforms) when the connection cap is derived from the process's descriptor limit.
FD_RESERVE = 256

# After a 408 the write side is shut and what the client still sends is read and dropped for this long
# before the close, so its pending bytes do not turn the close into a reset that loses the 408. A closed
# connection whose answer cannot be flushed (a client that does not read) is reset after this long too.
LINGER_SECONDS = 2.0

_FRESH, _HEADERS, _BODY, _BUSY, _IDLE, _LINGER, _CLOSING, _REFUSED = range(8)
_NEVER = math.inf

_RESPONSE_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 15\r\nconnection: close\r\n\r\nRequest Timeout"
)
_RESPONSE_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 19\r\nconnection: close\r\nretry-after: 1\r\n\r\nService Unavailable"
)


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    body_min_rate: float = 16384.0  # bytes per second
    keep_alive_timeout: float = 5.0
    max_connections: int = 4096
    max_body_bytes: int | None = None  # a larger declared size earns no more time (the app refuses it)

    @property
    def tick(self) -> float:
        """How often deadlines are checked: a tenth of the shortest timeout, between 50 ms and 1 s."""
        shortest = min(self.header_timeout, self.body_timeout, self.keep_alive_timeout)
        return min(1.0, max(0.05, shortest / 10))


# ---- pure timing rules --------------------------------------------------------------------------------


def body_deadline(started: float, declared: int | None, received: int, limits: Limits) -> float:
    """When a request body that began at ``started`` must be complete: ``body_timeout`` plus its size at
    ``body_min_rate``. The size is the declared Content-Length, or the bytes received so far for a chunked
    body (so a chunked body must keep arriving at the floor rate); never more than ``max_body_bytes``."""
    size = max(declared or 0, received)
    if limits.max_body_bytes is not None:
        size = min(size, limits.max_body_bytes)
    return started + limits.body_timeout + size / limits.body_min_rate


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length of a request (lower-case header names, as uvicorn keeps them), or None."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


def connection_cap(configured: int, fd_soft_limit: int | None, reserve: int = FD_RESERVE) -> int:
    """The connection cap that still leaves ``reserve`` descriptors free under the process's limit."""
    if fd_soft_limit is None or fd_soft_limit < 0 or fd_soft_limit == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, fd_soft_limit - reserve))


def _fd_soft_limit() -> int | None:
    try:
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):  # pragma: no cover
        return None


# ---- the guard --------------------------------------------------------------------------------------


class ConnectionGuard:
    """Limits for one listener (``listener`` labels its metrics: ``public`` or ``admin``)."""

    def __init__(self, listener: str, limits: Limits) -> None:
        self.listener = listener
        self.limits = limits
        self.cap = connection_cap(limits.max_connections, _fd_soft_limit())
        if self.cap < limits.max_connections:
            log.warning(
                "%s port: connection cap lowered from %d to %d to stay under the process's descriptor limit",
                listener,
                limits.max_connections,
                self.cap,
            )
        self.open: set[_Guarded] = set()
        self._gauge = CONNECTIONS_OPEN.labels(listener=listener)
        self._refused = CONNECTIONS_REFUSED.labels(listener=listener)
        self._timed_out = {r: CONNECTIONS_TIMED_OUT.labels(listener=listener, reason=r) for r in REASONS}
        self._sweeper: asyncio.TimerHandle | None = None
        self._last_refusal_log = -math.inf
        self._refusals_unlogged = 0

    def protocol_class(self, http: str = "auto") -> type[asyncio.Protocol]:
        """uvicorn's HTTP protocol (``http="auto" | "httptools" | "h11"``) with this guard's limits, for
        ``uvicorn.Config(http=...)``."""
        base: type[_Guarded]
        if http == "h11" or (http == "auto" and HttpToolsProtocol is None):
            base = GuardedH11Protocol
        elif http in ("auto", "httptools"):
            base = GuardedHttpToolsProtocol
        else:
            raise ValueError(f"no connection guard for http={http!r}")
        return type(base.__name__, (base,), {"guard": self})

    def uvicorn_options(self) -> dict[str, Any]:
        """uvicorn.Config keyword arguments that go with this guard."""
        return {
            "http": self.protocol_class(),
            "ws": "none",
            "timeout_keep_alive": max(1, math.ceil(self.limits.keep_alive_timeout)),
        }

    # -- called by the protocols --

    def admit(self, conn: _Guarded, transport: asyncio.Transport) -> bool:
        if len(self.open) >= self.cap:
            self._refused.inc()
            self._log_refusal()
            transport.write(_RESPONSE_503)
            transport.close()
            return False
        now = conn.loop.time()
        conn._phase = _FRESH
        conn._since = now
        conn._deadline = now + self.limits.keep_alive_timeout
        conn._received = 0
        self.open.add(conn)
        self._gauge.inc()
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self.limits.tick, self._sweep, conn.loop)
        return True

    def release(self, conn: _Guarded) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self._gauge.dec()
        if not self.open and self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def timed_out(self, conn: _Guarded, reason: str) -> None:
        self._timed_out[reason].inc()
        if reason in ("header", "body"):
            peer = f"{conn.client[0]}:{conn.client[1]}" if conn.client else "unknown peer"
            log.info(
                "%s port: closed the connection from %s: request %s not received within its deadline",
                self.listener,
                peer,
                "headers" if reason == "header" else "body",
            )

    # -- internals --

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in [c for c in self.open if c._deadline <= now]:
            conn._expire(now)
        self._sweeper = loop.call_later(self.limits.tick, self._sweep, loop) if self.open else None

    def _log_refusal(self) -> None:
        self._refusals_unlogged += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= 10.0:
            log.warning(
                "%s port: %d connection(s) refused at the cap of %d open connections",
                self.listener,
                self._refusals_unlogged,
                self.cap,
            )
            self._last_refusal_log = now
            self._refusals_unlogged = 0


class _Guarded(asyncio.Protocol):
    """The hooks shared by both HTTP implementations; the phase bookkeeping is a few attribute writes."""

    guard: ClassVar[ConnectionGuard]
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None
    headers: list[tuple[bytes, bytes]]
    cycle: Any
    _phase: int = _FRESH
    _deadline: float = _NEVER
    _since: float = 0.0  # fresh/idle: when the connection (or the last response) ended; body: its start
    _received: int = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.guard.admit(self, cast(asyncio.Transport, transport)):
            self._phase = _REFUSED
            return
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._phase == _REFUSED:
            return
        self.guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase >= _LINGER:
            return
        if phase == _FRESH or phase == _IDLE:
            self._phase = _HEADERS
            start = self.loop.time() if phase == _FRESH else self._since
            self._deadline = start + self.guard.limits.header_timeout
        elif phase == _BODY:
            self._received += len(data)
        super().data_received(data)

    def _keep_alive_expired(self) -> None:  # uvicorn's own keep-alive timer fired
        if not self.transport.is_closing():
            self._closing(self.loop.time())
            self.guard.timed_out(self, "keep_alive")

    # -- phase changes --

    def _body_started(self) -> None:
        now = self.loop.time()
        self._phase = _BODY
        self._since = now
        self._received = 0
        self._deadline = now + self.guard.limits.body_timeout  # extended lazily by the declared size

    def _request_complete(self) -> None:
        if self.cycle is not None and self.cycle.response_complete:  # answered before the body ended
            self._idle()
        else:
            self._phase = _BUSY
            self._deadline = _NEVER

    def _idle(self) -> None:
        now = self.loop.time()
        self._phase = _IDLE
        self._since = now
        self._deadline = now + self.guard.limits.keep_alive_timeout

    def _expire(self, now: float) -> None:
        phase = self._phase
        if phase == _CLOSING:  # closed, but the answer could not be flushed: the client does not read
            self._deadline = _NEVER
            self.transport.abort()
            return
        if self.transport.is_closing():  # closed by uvicorn or the application
            self._closing(now)
            return
        if phase == _BODY:
            deadline = body_deadline(
                self._since, declared_length(self.headers), self._received, self.guard.limits
            )
            if deadline > now:
                self._deadline = deadline
                return
        self._deadline = _NEVER
        if phase == _FRESH or phase == _IDLE:
            self.guard.timed_out(self, "idle" if phase == _FRESH else "keep_alive")
        elif phase == _HEADERS:
            self.guard.timed_out(self, "header")
            self._answer_408(now)
            return
        elif phase == _BODY:
            self.guard.timed_out(self, "body")
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                cycle.disconnected = True  # the application sees http.disconnect and sends nothing
                cycle.message_event.set()
                self._answer_408(now)
                return
        elif phase != _LINGER:  # pragma: no cover - busy connections have no deadline
            return
        self.transport.close()
        self._closing(now)

    def _closing(self, now: float) -> None:
        self._phase = _CLOSING
        self._deadline = now + LINGER_SECONDS

    def _answer_408(self, now: float) -> None:
        self.transport.write(_RESPONSE_408)
        if not self.transport.can_write_eof():  # pragma: no cover - TLS
            self.transport.close()
            return
        self.transport.write_eof()
        self._phase = _LINGER
        self._deadline = now + LINGER_SECONDS


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(_Guarded, HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._body_started()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._request_complete()

        def on_response_complete(self) -> None:
            if self._phase == _BUSY and not self.pipeline:
                self._idle()
            super().on_response_complete()

        def timeout_keep_alive_handler(self) -> None:
            self._keep_alive_expired()
            super().timeout_keep_alive_handler()


class GuardedH11Protocol(_Guarded, H11Protocol):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._sync()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync()

    def timeout_keep_alive_handler(self) -> None:
        self._keep_alive_expired()
        super().timeout_keep_alive_handler()

    def _sync(self) -> None:
        state = self.conn.their_state
        phase = self._phase
        if state is h11.SEND_BODY:
            if phase != _BODY:
                self._body_started()
        elif state is h11.IDLE:
            if phase == _BODY or phase == _BUSY:
                if self.conn.trailing_data[0]:  # the next request has begun
                    self._idle()
                    self._phase = _HEADERS
                    self._deadline = self._since + self.guard.limits.header_timeout
                else:
                    self._idle()
        elif phase == _HEADERS or phase == _BODY:
            self._request_complete()
