"""The WeCom AI bot over its long connection: two connector replicas, exactly one socket for the bot at any
moment (the simulator counts authenticated sockets per bot), answers sent back on the socket, and the
owner killed with SIGKILL mid-answer: the other replica takes the socket over within the lease time and the
conversation still gets its answer."""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imrelay.natsserver import EmbeddedNats

from .stack import KEY, Stack

pytestmark = pytest.mark.nats

BOT_ID, SECRET = "aibLongConn01", "long-connection-secret"


@pytest.fixture(scope="module")
def conn_stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("longconn")
    s = Stack.create(root, nats_server)
    s.config["backends"] = {"default": {"kind": "openai", "base_url": f"{s.sim_url}/v1", "api_key": "k",
                                        "model": "m"}}
    s.config["bots"] = [{"id": "ws", "platform": "wecom_aibot", "mode": "long_connection",
                         "ws_url": s.sim_url.replace("http://", "ws://") + "/ws/aibot",
                         "credentials": {"token": "t", "encoding_aes_key": KEY, "bot_id": BOT_ID,
                                         "secret": SECRET}}]
    s.config["connector"] = {"heartbeat_seconds": 2, "ack_timeout_seconds": 3,  # default lease: 10 s
                             "reconnect_max_seconds": 4}
    s.config["sender"]["max_attempts"] = 8
    for name in ("connector1", "connector2"):
        s.add_service(name, ["imrelay_ingress.connector"])
    with s.running("sim", "worker", "sender", "connector1", "connector2"):
        yield s


def connections(stack: Stack) -> dict[str, int]:
    result: dict[str, int] = httpx.get(f"{stack.sim_url}/sim/aibot/connections").json()
    return result


def push(stack: Stack, text: str, user: str) -> dict[str, Any]:
    resp = httpx.post(f"{stack.sim_url}/sim/aibot/push",
                      json={"bot_id": BOT_ID, "text": text, "user": user})
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def answers(stack: Stack, final: str) -> list[dict[str, Any]]:
    return [m for m in stack.messages(bot="ws") if m["content"] == final and m["finish"]]


def owner(stack: Stack) -> str:
    held = [n for n in ("connector1", "connector2") if stack.services[n].proc is not None
            and stack.metric(n, "imrelay_connector_lease_held", {"bot": "ws"}) == 1]
    assert len(held) == 1, held
    return held[0]


def test_message_in_one_answer_out_on_the_socket(conn_stack: Stack) -> None:
    conn_stack.wait_for(lambda: connections(conn_stack).get(BOT_ID) == 1, what="the bot's socket")
    text = f"hello over the socket {secrets.token_hex(2)}"
    push(conn_stack, text, "alice")
    [answer] = conn_stack.wait_for(lambda: answers(conn_stack, f"You said: {text}"), what="the answer")
    assert answer["via"] == "stream" and len(answer["history"]) >= 1
    assert connections(conn_stack)["peak"] == 1


def test_owner_killed_mid_answer_another_takes_over(conn_stack: Stack) -> None:
    httpx.post(f"{conn_stack.sim_url}/sim/llm", json={"token_delay": 0.5}).raise_for_status()
    try:
        text = "a slow answer that outlives its connector " + secrets.token_hex(2)
        final = f"You said: {text}"
        push(conn_stack, text, "bob")
        conn_stack.wait_for(lambda: any(m["content"] for m in conn_stack.messages(bot="ws")
                                        if final.startswith(m["content"]) and not m["finish"]),
                            what="the answer to start streaming")
        victim = owner(conn_stack)
        subscribes = conn_stack.sim_stats()["aibot_ws_subscribes"]
        proc = conn_stack.services[victim].proc
        assert proc is not None
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        conn_stack.services[victim].proc = None
        conn_stack.wait_for(lambda: conn_stack.sim_stats()["aibot_ws_subscribes"] > subscribes,
                            timeout=30, what="another connector to take the socket")
        failover = time.monotonic() - killed
        print(f"\nsocket taken over {failover:.1f}s after the owner was killed (lease 10 s)")
        got = conn_stack.wait_for(lambda: answers(conn_stack, final), timeout=60,
                                  what="the answer after the takeover")
        assert len(got) == 1  # shown once: the new socket's proactive send finishes it
    finally:
        httpx.post(f"{conn_stack.sim_url}/sim/llm", json={"token_delay": 0}).raise_for_status()
    assert owner(conn_stack) != victim
    assert connections(conn_stack)["peak"] == 1  # never two sockets for the bot at once


async def test_replaced_by_an_outside_connection_stands_down_without_a_storm(conn_stack: Stack) -> None:
    import asyncio
    import json

    from websockets.asyncio.client import connect

    conn_stack.wait_for(lambda: connections(conn_stack).get(BOT_ID) == 1, what="the bot's socket")
    holder = owner(conn_stack)
    kicked = conn_stack.metric(holder, "imrelay_connector_events_total", {"outcome": "kicked"})
    before = conn_stack.sim_stats()["aibot_ws_subscribes"]
    url = conn_stack.sim_url.replace("http://", "ws://") + "/ws/aibot"
    async with connect(url) as ws:  # another client connects as the same bot
        await ws.send(json.dumps({"cmd": "aibot_subscribe", "headers": {"req_id": "outside"},
                                  "body": {"bot_id": BOT_ID, "secret": SECRET}}))
        assert json.loads(await ws.recv())["errcode"] == 0
        await asyncio.sleep(2.5)  # the cluster stands down instead of fighting back
        assert conn_stack.sim_stats()["aibot_ws_subscribes"] == before + 1
        assert conn_stack.metric(holder, "imrelay_connector_events_total",
                                 {"outcome": "kicked"}) == kicked + 1
        assert owner(conn_stack) == holder  # it kept the lease: the other replica did not step in
    # once the outside client is gone, the owner reconnects after its stand-down
    await asyncio.to_thread(conn_stack.wait_for, lambda: connections(conn_stack).get(BOT_ID) == 1,
                            10, "the socket to come back")
    assert owner(conn_stack) == holder  # the same replica, back after standing down
