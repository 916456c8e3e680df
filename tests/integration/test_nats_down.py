"""NATS stopped: the ingress answers 503 (the platform will retry) and stores nothing; when NATS is back
the ingress reconnects by itself and the retried callback is stored once. NATS not there yet (a fresh
install): every service is alive at once and becomes ready when NATS answers."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imrelay.config import parse_settings
from imrelay.natsserver import EmbeddedNats
from imrelay_sim.client import build_callback

from ..helpers import free_port
from .stack import KEY, Stack, stored_inbound

pytestmark = pytest.mark.nats


@pytest.fixture
def ingress_only(nats_server: EmbeddedNats, tmp_path: Path) -> Iterator[Stack]:
    s = Stack.create(tmp_path, nats_server).start("ingress")
    try:
        yield s
    finally:
        s.stop()


def post(stack: Stack, msg_id: str) -> int:
    bot = parse_settings(stack.config, {}).bots[0]
    query, body = build_callback(bot, "hello", "alice", msg_id, int(time.time()))
    return httpx.post(f"{stack.ingress_url}/callback/{bot.id}?{query}", content=body, timeout=15).status_code


def test_nats_down_means_503_and_nothing_stored_inbound(
    ingress_only: Stack, nats_server: EmbeddedNats
) -> None:
    before = asyncio.run(stored_inbound(nats_server.url))
    nats_server.stop()
    try:
        msg_id = str(secrets.randbelow(2**62))
        assert post(ingress_only, msg_id) == 503
        ready = httpx.get(f"{ingress_only.admin_url('ingress')}/readyz", timeout=5)
        assert ready.status_code == 503
    finally:
        nats_server.start()
    assert asyncio.run(stored_inbound(nats_server.url)) == before
    # the platform retries: accepted once NATS is back (the ingress reconnects on its own)
    ingress_only.wait_for(
        lambda: post(ingress_only, msg_id) == 200,
        timeout=30,
        what="the ingress to accept after NATS came back",
    )
    assert post(ingress_only, msg_id) == 200
    assert asyncio.run(stored_inbound(nats_server.url)) == before + 1


SERVICES = ("ingress", "worker", "sender", "connector")


def test_services_are_alive_before_nats_and_ready_once_it_answers(tmp_path: Path) -> None:
    """A fresh install: the services start before NATS has formed its cluster. Each serves its admin port
    at once, ``/healthz`` alive and ``/readyz`` 503 (saying it waits for NATS), and none exits; once a
    nats-server answers on that port, each becomes ready by itself."""
    port = free_port()
    later = EmbeddedNats(store_dir=tmp_path / "nats", port=port)
    later.port = port  # the URL the services are given; nothing listens there yet
    s = Stack.create(tmp_path, later)
    s.config["bots"].append(
        {
            "id": "ws",
            "platform": "wecom_aibot",
            "mode": "long_connection",
            "ws_url": s.sim_url.replace("http://", "ws://") + "/ws/aibot",
            "credentials": {"token": "t", "encoding_aes_key": KEY, "bot_id": "aibDown01", "secret": "down"},
        }
    )
    s.add_service("connector", ["imrelay_ingress.connector"])
    try:
        s.rewrite_config()
        s.start("sim")
        for name in SERVICES:
            s.services[name].start(status=503)  # the admin port answers while NATS is away
        for name in SERVICES:
            admin = s.admin_url(name)
            assert httpx.get(f"{admin}/healthz", timeout=5).status_code == 200
            ready = httpx.get(f"{admin}/readyz", timeout=5)
            assert ready.status_code == 503
            if name != "ingress":
                assert "waiting for NATS" in ready.text
        later.start()
        for name in SERVICES:
            s.wait_for(
                lambda n=name: httpx.get(f"{s.admin_url(n)}/readyz", timeout=5).status_code == 200,
                timeout=60,
                what=f"{name} to become ready once NATS answers",
            )
        for name in SERVICES:
            proc = s.services[name].proc
            assert proc is not None and proc.poll() is None, f"{name} exited"
    finally:
        s.stop()
        later.cleanup()


def test_a_service_stopped_while_waiting_for_nats_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    never = EmbeddedNats(store_dir=tmp_path / "nats", port=port)
    never.port = port
    s = Stack.create(tmp_path, never)
    s.services["worker"].start(status=503)
    assert s.services["worker"].stop() == 0
