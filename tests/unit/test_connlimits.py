"""Connection limits: the pure timing rules, and each HTTP implementation's guard on a real uvicorn server
(in this process, on a free port, with short timeouts)."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import pytest
import uvicorn

from imrelay.config import AdminConfig, IngressConfig, parse_settings
from imrelay.connlimits import (
    LINGER_SECONDS,
    ConnectionGuard,
    Limits,
    body_deadline,
    connection_cap,
    declared_length,
)
from imrelay.runtime import EmbeddedServer
from imrelay.telemetry import CONNECTIONS_REFUSED, CONNECTIONS_TIMED_OUT

from ..helpers import free_port

# ---- pure rules ---------------------------------------------------------------------------------------


def test_body_deadline_grows_with_the_declared_size_at_the_floor_rate() -> None:
    limits = Limits(body_timeout=10, body_min_rate=1000)
    assert body_deadline(100.0, None, 0, limits) == 110.0
    assert body_deadline(100.0, 5000, 0, limits) == 115.0
    assert body_deadline(100.0, 5000, 200, limits) == 115.0  # what was received counts only beyond it


def test_a_chunked_body_earns_time_by_what_it_has_sent() -> None:
    limits = Limits(body_timeout=10, body_min_rate=1000)
    assert body_deadline(0.0, None, 3000, limits) == 13.0


def test_a_declared_size_above_the_body_limit_earns_no_more_time() -> None:
    limits = Limits(body_timeout=10, body_min_rate=1000, max_body_bytes=4000)
    assert body_deadline(0.0, 10**12, 0, limits) == 14.0


def test_declared_length() -> None:
    assert declared_length([(b"host", b"x"), (b"content-length", b"42")]) == 42
    assert declared_length([(b"transfer-encoding", b"chunked")]) is None
    assert declared_length([(b"content-length", b"-1")]) is None


def test_the_cap_leaves_room_under_the_descriptor_limit() -> None:
    assert connection_cap(4096, 1024, reserve=256) == 768
    assert connection_cap(4096, 1_048_576) == 4096
    assert connection_cap(4096, resource.RLIM_INFINITY) == 4096
    assert connection_cap(4096, None) == 4096
    assert connection_cap(4096, 100, reserve=256) == 1


def test_deadlines_are_checked_often_enough() -> None:
    assert Limits(header_timeout=10, body_timeout=10, keep_alive_timeout=5).tick == 0.5
    assert Limits(header_timeout=0.2, body_timeout=10, keep_alive_timeout=5).tick == 0.05
    assert Limits(header_timeout=60, body_timeout=60, keep_alive_timeout=60).tick == 1.0


def test_the_settings_have_safe_defaults_and_map_onto_the_limits() -> None:
    ingress = IngressConfig().connections.limits(max_body_bytes=1 << 20)
    assert (ingress.header_timeout, ingress.body_timeout, ingress.keep_alive_timeout) == (10, 10, 5)
    assert (ingress.body_min_rate, ingress.max_connections, ingress.max_body_bytes) == (16384, 4096, 1 << 20)
    assert AdminConfig().connections.max_connections == 64
    settings = parse_settings(
        {"ingress": {"connections": {"header_timeout_seconds": 3, "max_connections": 100}}}, {}
    )
    assert settings.ingress.connections.limits().header_timeout == 3
    assert settings.ingress.connections.limits().max_connections == 100


# ---- each HTTP implementation on a real server ---------------------------------------------------------

LIMITS = Limits(
    header_timeout=0.6, body_timeout=0.6, body_min_rate=2000, keep_alive_timeout=0.6, max_connections=3
)
SLACK = 3.0  # how late a close may come on a busy machine (the check runs every 60 ms)

Server = tuple[int, str, ConnectionGuard]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] == "/big":  # 16 MiB in one piece: more than the socket buffers hold
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % (16 << 20))],
            }
        )
        await send({"type": "http.response.body", "body": b"z" * (16 << 20)})
        return
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    answer = str(size).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(answer))],
        }
    )
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(params=["httptools", "h11"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[int, str, ConnectionGuard]]:
    port = free_port()
    listener = f"test-{request.param}"
    guard = ConnectionGuard(listener, LIMITS)
    options = guard.uvicorn_options() | {"http": guard.protocol_class(request.param)}
    srv = EmbeddedServer(
        uvicorn.Config(
            echo_length,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            **options,
        )
    )
    task = asyncio.create_task(srv.serve())
    for _ in range(1000):
        if srv.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield port, listener, guard
    finally:
        srv.should_exit = True
        await task


def timed_out(listener: str, reason: str) -> float:
    return float(CONNECTIONS_TIMED_OUT.labels(listener=listener, reason=reason)._value.get())


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout=10)


async def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    port, listener, _ = server
    before = timed_out(listener, "idle")
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await until_closed(reader) == b""
    elapsed = time.monotonic() - started
    assert LIMITS.keep_alive_timeout <= elapsed + 0.01 < LIMITS.keep_alive_timeout + SLACK
    assert timed_out(listener, "idle") == before + 1
    writer.close()


async def test_slow_headers_get_a_408(server: Server) -> None:
    port, listener, _ = server
    before = timed_out(listener, "header")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"POST /x HTTP/1.1\r\n")

    async def trickle() -> None:
        for i in range(100):
            await asyncio.sleep(0.1)
            writer.write(b"X-%d: y\r\n" % i)

    sender = asyncio.create_task(trickle())
    answer = await until_closed(reader)
    elapsed = time.monotonic() - started
    sender.cancel()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert LIMITS.header_timeout <= elapsed + 0.01 < LIMITS.header_timeout + SLACK
    assert timed_out(listener, "header") == before + 1
    writer.close()


async def test_a_slow_body_gets_a_408(server: Server) -> None:
    port, listener, _ = server
    before = timed_out(listener, "body")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 1000\r\n\r\n")
    started = time.monotonic()

    async def trickle() -> None:
        for _ in range(1000):
            writer.write(b"a")
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(trickle())
    answer = await until_closed(reader)
    elapsed = time.monotonic() - started
    sender.cancel()
    assert answer.startswith(b"HTTP/1.1 408 ")
    allowed = LIMITS.body_timeout + 1000 / LIMITS.body_min_rate
    assert allowed <= elapsed + 0.01 < allowed + SLACK
    assert timed_out(listener, "body") == before + 1
    writer.close()


async def test_a_slow_chunked_body_gets_a_408(server: Server) -> None:
    port, _, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n")

    async def trickle() -> None:
        for _ in range(1000):
            writer.write(b"1\r\na\r\n")
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(trickle())
    answer = await until_closed(reader)
    sender.cancel()
    assert answer.startswith(b"HTTP/1.1 408 ")
    writer.close()


async def test_a_large_body_at_a_modest_rate_within_the_limits_succeeds(server: Server) -> None:
    port, _, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # 3000 bytes may take 0.6 + 1.5 s; they take about 1 s (longer than any single timeout)
    writer.write(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3000\r\n\r\n")
    for _ in range(10):
        writer.write(b"b" * 300)
        await asyncio.sleep(0.1)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert await reader.readexactly(4) == b"3000"
    writer.close()


async def test_a_kept_alive_connection_serves_again_then_closes_when_idle(server: Server) -> None:
    port, listener, _ = server
    before = timed_out(listener, "keep_alive")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for body in (b"one", b"three"):
        writer.write(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await reader.readexactly(1) == b"%d" % len(body)
        await asyncio.sleep(0.3)  # idle, but under the keep-alive timeout
    assert await until_closed(reader) == b""
    assert timed_out(listener, "keep_alive") == before + 1
    writer.close()


async def test_connections_beyond_the_cap_get_a_503(server: Server) -> None:
    port, listener, _ = server
    refused = CONNECTIONS_REFUSED.labels(listener=listener)
    before = refused._value.get()
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        answer = await until_closed(reader)
    except ConnectionResetError:
        answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 503 ")
    assert refused._value.get() == before + 1
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.2)  # the held ones are gone: room again
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    assert head.startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_a_client_that_does_not_read_its_answer_is_reset(server: Server) -> None:
    port, _, guard = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    writer.write(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n")
    started = time.monotonic()
    await asyncio.sleep(0.3)
    assert len(guard.open) == 1
    # closed when idle after the answer, which cannot be flushed; reset after the linger time
    for _ in range(int((LIMITS.keep_alive_timeout + LINGER_SECONDS + SLACK) / 0.05)):
        if not guard.open:
            break
        await asyncio.sleep(0.05)
    assert not guard.open
    assert time.monotonic() - started >= LIMITS.keep_alive_timeout
    writer.close()
