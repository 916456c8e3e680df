"""The public port cannot be held open: a real ingress (with short limits) closes slow-header, slow-body and
idle connections within their deadlines while signed callbacks keep being answered, gives its descriptors
back afterwards, and refuses connections beyond its cap."""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from imrelay.config import parse_settings
from imrelay.natsserver import EmbeddedNats
from imrelay_sim.client import build_callback

from .stack import Stack

pytestmark = pytest.mark.nats

HEADER, BODY, RATE, IDLE = 2.0, 2.0, 1000.0, 2.0
ATTACKERS = 300  # of each kind
SLACK = 5.0  # how late a close may be on a loaded machine (deadlines are checked every 0.2 s)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def ingress(nats_server: EmbeddedNats, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    connections = {
        "header_timeout_seconds": HEADER,
        "body_timeout_seconds": BODY,
        "body_min_rate_bytes_per_second": RATE,
        "keep_alive_timeout_seconds": IDLE,
        "max_connections": 5000,
    }
    connections.update(getattr(request, "param", {}))
    s = Stack.create(tmp_path, nats_server, ingress={"connections": connections})
    with s.running("ingress"):
        yield s


def pid_of(stack: Stack) -> int:
    proc = stack.services["ingress"].proc
    assert proc is not None
    return proc.pid


async def callback(client: httpx.AsyncClient, stack: Stack) -> int:
    bot = parse_settings(stack.config, {}).bots[0]
    query, body = build_callback(bot, "hello", "alice", str(secrets.randbelow(2**62)), int(time.time()))
    response = await client.post(f"{stack.ingress_url}/callback/{bot.id}?{query}", content=body)
    return response.status_code


@dataclass
class Attack:
    kind: str
    allowed: float  # the deadline this connection must be closed by, from its start
    started: float = 0.0
    closed: float | None = None
    answer: bytes = b""


async def attacker(port: int, attack: Attack) -> None:
    attack.started = time.monotonic()  # an upper bound: the server may accept a little later
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def trickle() -> None:
        if attack.kind == "header":
            writer.write(b"POST /callback/app HTTP/1.1\r\n")
            for i in range(1000):
                await asyncio.sleep(1.0)
                writer.write(b"x-pad-%d: 1\r\n" % i)
        elif attack.kind == "body":
            writer.write(b"POST /callback/app HTTP/1.1\r\nhost: a\r\ncontent-length: 1000\r\n\r\n")
            for _ in range(1000):
                writer.write(b"a")
                await asyncio.sleep(0.5)

    sender = asyncio.create_task(trickle())
    try:
        attack.answer = await asyncio.wait_for(reader.read(), timeout=60)
    except ConnectionResetError:
        attack.answer = b"<reset>"
    attack.closed = time.monotonic()
    sender.cancel()
    writer.close()


async def test_slow_and_idle_connections_are_closed_while_callbacks_are_answered(ingress: Stack) -> None:
    pid, port = pid_of(ingress), ingress.ports["ingress"]
    async with httpx.AsyncClient(timeout=10) as client:
        assert await callback(client, ingress) == 200  # warm
    await asyncio.sleep(IDLE + 1)  # that connection has been closed as idle
    fds_before = open_fds(pid)

    attacks = [Attack("header", HEADER) for _ in range(ATTACKERS)]
    attacks += [Attack("body", BODY + 1000 / RATE) for _ in range(ATTACKERS)]
    attacks += [Attack("idle", IDLE) for _ in range(ATTACKERS)]
    running = asyncio.gather(*(attacker(port, a) for a in attacks))

    statuses: list[int] = []
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(25):  # signed callbacks throughout the attack (about 5 s)
            t = time.perf_counter()
            statuses.append(await callback(client, ingress))
            latencies.append(time.perf_counter() - t)
            await asyncio.sleep(0.2)
    await asyncio.wait_for(running, timeout=60)

    assert statuses == [200] * 25
    late = [
        (a.kind, (a.closed or math.inf) - a.started)
        for a in attacks
        if a.closed is None or a.closed - a.started > a.allowed + SLACK
    ]
    assert not late, f"{len(late)} connections outlived their deadline, e.g. {late[:5]}"
    for a in attacks:
        if a.kind in ("header", "body"):
            assert a.answer.startswith(b"HTTP/1.1 408 "), (a.kind, a.answer[:40])
        else:
            assert a.answer == b""
    worst = {
        k: max((a.closed or 0) - a.started for a in attacks if a.kind == k)
        for k in ("header", "body", "idle")
    }
    latencies.sort()
    print(
        f"closed after (worst, s): {worst}; callbacks median {latencies[12] * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )

    ingress.wait_for(
        lambda: open_fds(pid) <= fds_before,
        timeout=15,
        what=f"the ingress's descriptors back to {fds_before} (now {open_fds(pid)})",
    )
    for reason in ("header", "body", "idle"):
        assert (
            ingress.metric(
                "ingress", "imrelay_http_connection_timeouts_total", {"listener": "public", "reason": reason}
            )
            == ATTACKERS
        )
    assert ingress.metric("ingress", "imrelay_http_connections_open", {"listener": "public"}) == 0
    log = (ingress.root / "ingress.log").read_text()
    cut_off = [line for line in log.splitlines() if "not received within its deadline" in line]
    assert len(cut_off) == 2 * ATTACKERS  # once per request cut off, with the peer, never the content
    assert all(" INFO " in line and "from 127.0.0.1:" in line for line in cut_off)
    assert "x-pad" not in log and "Exception in ASGI application" not in log


CAP = 50


@pytest.mark.parametrize(
    "ingress",
    [{"max_connections": CAP, "keep_alive_timeout_seconds": 60, "header_timeout_seconds": 60}],
    indirect=True,
)
async def test_connections_beyond_the_cap_are_refused(ingress: Stack) -> None:
    pid, port = pid_of(ingress), ingress.ports["ingress"]
    fds_before = open_fds(pid)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CAP)]
    await asyncio.sleep(0.5)
    extra = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4 * CAP)]

    async def answer(reader: asyncio.StreamReader) -> bytes:
        try:
            return await asyncio.wait_for(reader.read(), timeout=5)
        except ConnectionResetError:
            return b"<reset>"

    answers = await asyncio.gather(*(answer(r) for r, _ in extra))
    assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers), {a[:30] for a in answers}
    # every extra connection is still open on our side: the ingress let go of each one it refused
    assert open_fds(pid) < fds_before + CAP + 10
    async with httpx.AsyncClient(timeout=10) as client:
        try:  # at the cap a callback is refused too: a 503 written before its request, then the close
            assert await callback(client, ingress) == 503
        except httpx.HTTPError:
            pass
        refused = ingress.metric("ingress", "imrelay_http_connections_refused_total", {"listener": "public"})
        assert refused >= 4 * CAP
        for _, writer in [*held, *extra]:
            writer.close()
        await asyncio.sleep(0.5)
        assert await callback(client, ingress) == 200  # room again
