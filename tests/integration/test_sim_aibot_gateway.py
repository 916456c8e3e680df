"""The simulator's AI-bot gateway (a real server, raw WebSocket clients) behaves as the live one does at the
connection level: a wrong secret gets 853000 on a socket left open, a kicked socket is told at once, keeps
answering pings, and is then dropped without a close frame; acks come after the configured latency; pushed
callbacks carry ``create_time`` and a ``response_url``."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

from ..helpers import free_port
from .stack import KEY, Service

BOT_ID, SECRET = "aibGateway01", "gateway-secret"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("sim-gateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = {
        "bots": [
            {
                "id": "ws",
                "platform": "wecom_aibot",
                "mode": "long_connection",
                "ws_url": f"ws://127.0.0.1:{port}/ws/aibot",
                "credentials": {"token": "t", "encoding_aes_key": KEY, "bot_id": BOT_ID, "secret": SECRET},
            }
        ]
    }
    (root / "imrelay.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, IMRELAY_CONFIG=str(root / "imrelay.yaml"))
    svc = Service(
        "sim", ["imrelay_sim", "serve", "--port", str(port)], env, f"{url}/sim/stats", root / "sim.log"
    ).start()
    try:
        yield url
    finally:
        svc.stop()


def frame(cmd: str, rid: str, body: dict[str, Any] | None = None) -> str:
    return json.dumps({"cmd": cmd, "headers": {"req_id": rid}, "body": body or {}})


async def subscribe(ws: ClientConnection, secret: str = SECRET) -> dict[str, Any]:
    await ws.send(frame("aibot_subscribe", "sub", {"bot_id": BOT_ID, "secret": secret}))
    got: dict[str, Any] = json.loads(await ws.recv())
    return got


def control(sim: str, **knobs: float) -> None:
    httpx.post(f"{sim}/sim/aibot/control", json=knobs).raise_for_status()


async def test_a_wrong_secret_gets_853000_and_the_socket_stays_open(sim: str) -> None:
    async with connect(sim.replace("http", "ws") + "/ws/aibot") as ws:
        assert (await subscribe(ws, "wrong"))["errcode"] == 853000
        await ws.send(frame("ping", "p1"))  # still open: answered (not subscribed), not closed
        assert json.loads(await ws.recv())["headers"]["req_id"] == "p1"
        assert (await subscribe(ws))["errcode"] == 0  # and usable once the secret is right


async def test_a_kicked_socket_keeps_working_then_is_dropped_without_a_close_frame(sim: str) -> None:
    control(sim, kick_drop_after=1.5)
    try:
        url = sim.replace("http", "ws") + "/ws/aibot"
        async with connect(url) as old, connect(url) as new:
            assert (await subscribe(old))["errcode"] == 0
            assert (await subscribe(new))["errcode"] == 0
            kick = json.loads(await old.recv())
            assert kick["cmd"] == "aibot_event_callback"
            assert kick["body"]["event"]["eventtype"] == "disconnected_event"
            await old.send(frame("ping", "still-there"))
            assert json.loads(await old.recv())["errcode"] == 0  # pings still answered after the kick
            with pytest.raises(ConnectionClosedError) as dropped:
                await asyncio.wait_for(old.recv(), timeout=10)
            assert dropped.value.rcvd is None  # dropped: no close frame from the gateway
            await new.send(frame("ping", "new"))
            assert json.loads(await new.recv())["errcode"] == 0
    finally:
        control(sim, kick_drop_after=30)


async def test_acks_take_the_configured_latency_and_callbacks_carry_time_and_response_url(sim: str) -> None:
    control(sim, ack_latency=0.3)
    try:
        async with connect(sim.replace("http", "ws") + "/ws/aibot") as ws:
            assert (await subscribe(ws))["errcode"] == 0
            sent = time.monotonic()
            await ws.send(frame("ping", "slow"))
            assert json.loads(await ws.recv())["errcode"] == 0
            assert time.monotonic() - sent >= 0.25
            resp = await asyncio.to_thread(
                httpx.post, f"{sim}/sim/aibot/push", json={"bot_id": BOT_ID, "text": "hi"}
            )
            resp.raise_for_status()
            body = json.loads(await ws.recv())["body"]
            assert abs(body["create_time"] - time.time()) < 60
            assert body["response_url"].startswith(f"{sim}/cgi-bin/aibot/response?response_code=")
    finally:
        control(sim, ack_latency=0)
