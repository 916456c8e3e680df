"""The WeCom AI bot over its long connection: two connector replicas, exactly one socket for the bot at any
moment (the simulator counts authenticated sockets per bot), answers sent back on the socket, and the
owner killed with SIGKILL mid-answer: the other replica takes the socket over within the lease time and the
conversation still gets its answer. The gateway's own moves, played by the simulator as the live one makes
them: closes after healthy periods (each followed by a quick reconnect), a kick by another instance (no
re-subscription within the hold-off), and a wrong secret (853000 on an open socket: a configuration error,
no reconnect storm)."""

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
HOLDOFF = 6.0  # connector.kick_holdoff_seconds here (default 600)


@pytest.fixture(scope="module")
def conn_stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("longconn")
    s = Stack.create(root, nats_server)
    s.config["backends"] = {
        "default": {"kind": "openai", "base_url": f"{s.sim_url}/v1", "api_key": "k", "model": "m"}
    }
    s.config["bots"] = [
        {
            "id": "ws",
            "platform": "wecom_aibot",
            "mode": "long_connection",
            "ws_url": s.sim_url.replace("http://", "ws://") + "/ws/aibot",
            "credentials": {"token": "t", "encoding_aes_key": KEY, "bot_id": BOT_ID, "secret": SECRET},
        }
    ]
    s.config["connector"] = {
        "heartbeat_seconds": 2,
        "ack_timeout_seconds": 3,  # default lease: 10 s
        "reconnect_max_seconds": 4,
        "healthy_seconds": 1,
        "kick_holdoff_seconds": HOLDOFF,
    }
    s.config["sender"]["max_attempts"] = 8
    for name in ("connector1", "connector2"):
        s.add_service(name, ["imrelay_ingress.connector"])
    with s.running("sim", "worker", "sender", "connector1", "connector2"):
        yield s


def connections(stack: Stack) -> dict[str, int]:
    result: dict[str, int] = httpx.get(f"{stack.sim_url}/sim/aibot/connections").json()
    return result


def push(stack: Stack, text: str, user: str) -> dict[str, Any]:
    resp = httpx.post(f"{stack.sim_url}/sim/aibot/push", json={"bot_id": BOT_ID, "text": text, "user": user})
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def answers(stack: Stack, final: str) -> list[dict[str, Any]]:
    return [m for m in stack.messages(bot="ws") if m["content"] == final and m["finish"]]


def owner(stack: Stack) -> str:
    held = [
        n
        for n in ("connector1", "connector2")
        if stack.services[n].proc is not None
        and stack.metric(n, "imrelay_connector_lease_held", {"bot": "ws"}) == 1
    ]
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
        conn_stack.wait_for(
            lambda: any(
                m["content"]
                for m in conn_stack.messages(bot="ws")
                if final.startswith(m["content"]) and not m["finish"]
            ),
            what="the answer to start streaming",
        )
        victim = owner(conn_stack)
        subscribes = conn_stack.sim_stats()["aibot_ws_subscribes"]
        proc = conn_stack.services[victim].proc
        assert proc is not None
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        conn_stack.services[victim].proc = None
        conn_stack.wait_for(
            lambda: conn_stack.sim_stats()["aibot_ws_subscribes"] > subscribes,
            timeout=30,
            what="another connector to take the socket",
        )
        failover = time.monotonic() - killed
        print(f"\nsocket taken over {failover:.1f}s after the owner was killed (lease 10 s)")
        got = conn_stack.wait_for(
            lambda: answers(conn_stack, final), timeout=60, what="the answer after the takeover"
        )
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
        await ws.send(
            json.dumps(
                {
                    "cmd": "aibot_subscribe",
                    "headers": {"req_id": "outside"},
                    "body": {"bot_id": BOT_ID, "secret": SECRET},
                }
            )
        )
        assert json.loads(await ws.recv())["errcode"] == 0
        await asyncio.sleep(2.5)  # the cluster stands down instead of fighting back
        assert conn_stack.sim_stats()["aibot_ws_subscribes"] == before + 1
        assert (
            conn_stack.metric(holder, "imrelay_connector_events_total", {"outcome": "kicked"}) == kicked + 1
        )
        assert owner(conn_stack) == holder  # it kept the lease: the other replica did not step in
    # once the outside client is gone, the owner reconnects after its stand-down
    await asyncio.to_thread(
        conn_stack.wait_for, lambda: connections(conn_stack).get(BOT_ID) == 1, 10, "the socket to come back"
    )
    assert owner(conn_stack) == holder  # the same replica, back after standing down


def events(stack: Stack, kind: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = httpx.get(f"{stack.sim_url}/sim/aibot/events").json()
    return [e for e in got if e["event"] == kind and e["bot_id"] == BOT_ID]


def readyz(stack: Stack, name: str) -> httpx.Response:
    return httpx.get(f"{stack.admin_url(name)}/readyz", timeout=5)


def sim_control(stack: Stack, **knobs: float) -> None:
    httpx.post(f"{stack.sim_url}/sim/aibot/control", json=knobs).raise_for_status()


def test_gateway_closes_after_healthy_periods_each_get_a_quick_reconnect(conn_stack: Stack) -> None:
    conn_stack.wait_for(lambda: connections(conn_stack).get(BOT_ID) == 1, what="the bot's socket")
    holder = owner(conn_stack)
    sim_control(conn_stack, ack_latency=0.3)  # the live gateway's acks take 0.24-0.45 s
    try:
        gaps = []
        for _ in range(4):
            subscribed = events(conn_stack, "subscribed")
            time.sleep(max(0.0, subscribed[-1]["at"] + 2.0 - time.time()))  # healthy: up for 2 s
            httpx.post(f"{conn_stack.sim_url}/sim/aibot/close", json={"bot_id": BOT_ID}).raise_for_status()
            [closed] = events(conn_stack, "closed_by_server")[-1:]
            n = len(subscribed)
            again = conn_stack.wait_for(
                lambda: events(conn_stack, "subscribed")[n:],  # noqa: B023
                timeout=15,
                what="the socket to come back",
            )
            gaps.append(again[0]["at"] - closed["at"])
        print(f"\nreconnects after server closes: {', '.join(f'{g:.2f}s' for g in gaps)}")
        assert all(g < 2.0 for g in gaps), gaps  # the backoff starts anew after each healthy socket
        conn_stack.wait_for(lambda: connections(conn_stack).get(BOT_ID) == 1, what="the bot's socket")
        text = f"after four gateway restarts {secrets.token_hex(2)}"
        push(conn_stack, text, "carol")
        conn_stack.wait_for(lambda: answers(conn_stack, f"You said: {text}"), what="the answer")
        time.sleep(1.0)
        assert len(answers(conn_stack, f"You said: {text}")) == 1
        assert owner(conn_stack) == holder
    finally:
        sim_control(conn_stack, ack_latency=0)


async def test_a_kick_closes_the_old_socket_and_holds_off_with_the_metric_raised(conn_stack: Stack) -> None:
    import asyncio
    import json

    from websockets.asyncio.client import connect

    await asyncio.to_thread(
        conn_stack.wait_for, lambda: connections(conn_stack).get(BOT_ID) == 1, 20, "the bot's socket"
    )
    holder = owner(conn_stack)
    sim_control(conn_stack, kick_drop_after=60)  # the gateway would keep the kicked socket for a minute
    closed_by_us = conn_stack.sim_stats().get("aibot_ws_kick_closed_by_client", 0)
    before = len(events(conn_stack, "subscribed"))
    url = conn_stack.sim_url.replace("http://", "ws://") + "/ws/aibot"
    try:
        async with connect(url) as ws:  # another instance of the same bot, e.g. on a laptop
            await ws.send(
                json.dumps(
                    {
                        "cmd": "aibot_subscribe",
                        "headers": {"req_id": "laptop"},
                        "body": {"bot_id": BOT_ID, "secret": SECRET},
                    }
                )
            )
            assert json.loads(await ws.recv())["errcode"] == 0
            kicked_at = time.monotonic()
            # the connector closes the kicked socket itself, long before the gateway would drop it
            await asyncio.to_thread(
                conn_stack.wait_for,
                lambda: conn_stack.sim_stats().get("aibot_ws_kick_closed_by_client", 0) > closed_by_us,
                10,
                "the kicked socket closed",
            )
            assert conn_stack.metric(holder, "imrelay_connector_standing_down", {"reason": "kicked"}) == 1
            ready = readyz(conn_stack, holder)
            assert ready.status_code == 503 and "taken by another instance" in ready.text, ready.text
            while time.monotonic() < kicked_at + HOLDOFF - 1.0:  # no re-subscription within the hold-off
                assert len(events(conn_stack, "subscribed")) == before + 1
                await asyncio.sleep(0.2)
            assert owner(conn_stack) == holder  # it kept the lease: the other replica did not step in
            # after the hold-off one attempt, which takes the bot back (and kicks the laptop)
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=HOLDOFF + 10))
            assert frame["body"]["event"]["eventtype"] == "disconnected_event"
        assert time.monotonic() - kicked_at >= HOLDOFF - 1.0
        await asyncio.to_thread(
            conn_stack.wait_for,
            lambda: conn_stack.metric(holder, "imrelay_connector_standing_down", {"reason": "kicked"}) == 0,
            10,
            "the all-clear",
        )
        assert readyz(conn_stack, holder).status_code == 200
    finally:
        sim_control(conn_stack, kick_drop_after=30)


def test_a_wrong_secret_is_a_configuration_error_without_a_reconnect_storm(conn_stack: Stack) -> None:
    import yaml

    bad = dict(
        conn_stack.config,
        bots=[
            dict(
                conn_stack.config["bots"][0],
                id="ws-bad",
                credentials=dict(conn_stack.config["bots"][0]["credentials"], secret="not-the-secret"),
            )
        ],
    )
    path = conn_stack.root / "wrong-secret.yaml"
    path.write_text(yaml.safe_dump(bad))
    svc = conn_stack.add_service("connector-bad", ["imrelay_ingress.connector"])
    svc.env["IMRELAY_CONFIG"] = str(path)
    refused = len(events(conn_stack, "refused"))
    svc.start(status=503)
    try:
        conn_stack.wait_for(lambda: len(events(conn_stack, "refused")) > refused, what="the subscription")
        conn_stack.wait_for(lambda: "853000" in readyz(conn_stack, "connector-bad").text, what="the reason")
        ready = readyz(conn_stack, "connector-bad")
        assert ready.status_code == 503
        assert "subscription refused" in ready.text and "credentials.secret" in ready.text, ready.text
        labels = {"bot": "ws-bad"}
        assert (
            conn_stack.metric(
                "connector-bad", "imrelay_connector_standing_down", dict(labels, reason="refused")
            )
            == 1
        )
        time.sleep(8)  # a reconnect storm would have tried again three or four times by now
        assert len(events(conn_stack, "refused")) == refused + 1
        assert (
            conn_stack.metric(
                "connector-bad", "imrelay_connector_events_total", dict(labels, outcome="refused")
            )
            == 1
        )
        # the gateway left the refused socket open; the connector closed it
        [sock] = [e["socket"] for e in events(conn_stack, "refused")[refused:]]
        closed = httpx.get(f"{conn_stack.sim_url}/sim/aibot/events").json()
        assert any(e["socket"] == sock and e["event"] == "closed_by_client" for e in closed)
        log = svc.log.read_text()
        assert "refused the subscription (errcode 853000" in log and "not-the-secret" not in log
    finally:
        svc.stop()
    assert connections(conn_stack).get(BOT_ID) == 1  # the real bot was never disturbed
