"""NATS stopped: the ingress answers 503 (the platform will retry) and stores nothing; when NATS is back
the ingress reconnects by itself and the retried callback is stored once."""

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
from imrelay_sim.__main__ import build_callback

from .stack import Stack, stored_inbound

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
    return httpx.post(f"{stack.ingress_url}/callback/{bot.id}?{query}", content=body,
                      timeout=15).status_code


def test_nats_down_means_503_and_nothing_stored_inbound(ingress_only: Stack,
                                                nats_server: EmbeddedNats) -> None:
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
    ingress_only.wait_for(lambda: post(ingress_only, msg_id) == 200, timeout=30,
                          what="the ingress to accept after NATS came back")
    assert post(ingress_only, msg_id) == 200
    assert asyncio.run(stored_inbound(nats_server.url)) == before + 1
