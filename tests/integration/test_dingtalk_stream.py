"""DingTalk Stream mode against the simulator's gateway, with two connector replicas (real processes):
both hold a connection of the same app (active-active); messages spread over both are each acked once
and answered once (through the session webhook); a replica killed with SIGKILL loses nothing sent to the
survivor; a socket the gateway closes comes back; a ``disconnect`` of every connection at once loses no
message pushed during the switch (each replacement opens before its old socket goes); with JetStream
unavailable no message is acked."""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imrelay.natsserver import EmbeddedNats

from .stack import Stack

pytestmark = pytest.mark.nats

APP_KEY, APP_SECRET = "dingstreamtest01", "ding-stream-secret"
REPLICAS = ("connector1", "connector2")


@pytest.fixture(scope="module")
def ding(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("dingstream")
    s = Stack.create(root, nats_server)
    s.config["bots"] = [
        {
            "id": "ding",
            "platform": "dingtalk",
            "mode": "long_connection",
            "api_base": s.sim_url,
            "credentials": {"app_key": APP_KEY, "app_secret": APP_SECRET},
        }
    ]
    s.config["connector"] = {
        "heartbeat_seconds": 2,
        "ack_timeout_seconds": 3,
        "reconnect_max_seconds": 2,
        "healthy_seconds": 1,
    }
    # many messages a minute here: above the robot's 20 (kept by the sender, enforced by the simulator)
    s.config["sender"]["rate_limits"] = {"dingtalk.per_robot": {"limit": 1000, "window_seconds": 60}}
    for name in REPLICAS:
        s.add_service(name, ["imrelay_ingress.connector"])
    with s.running("sim", "worker", "sender", *REPLICAS):
        s.control(webhook_limit=1000)
        yield s


def sim(stack: Stack, path: str, **body: Any) -> Any:
    if body:
        resp = httpx.post(f"{stack.sim_url}/sim/dingtalk/{path}", json=body, timeout=10)
    else:
        resp = httpx.get(f"{stack.sim_url}/sim/dingtalk/{path}", timeout=10)
    return resp.json()


def conns(stack: Stack) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = sim(stack, "connections")["ding"]
    return result


def push(stack: Stack, text: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{stack.sim_url}/sim/dingtalk/push",
        json={"bot_id": "ding", "text": text, "user": "alice", **extra},
        timeout=10,
    )


def answered(stack: Stack, text: str) -> list[dict[str, Any]]:
    return [m for m in stack.messages(bot="ding") if text in m["content"]]


def both_connected(stack: Stack) -> None:
    stack.wait_for(
        lambda: len([c for c in conns(stack) if not c["disconnecting"]]) == 2, 30, "two Stream connections"
    )


def check_each_once(stack: Stack, pushed: dict[str, str]) -> None:
    """Every pushed message (text -> messageId) acked once and answered once."""
    for text in pushed:
        stack.wait_for(lambda: answered(stack, text), 30, f"the answer to {text!r}")  # noqa: B023
    time.sleep(0.5)  # a duplicate would have arrived by now
    acks = sim(stack, "acks")
    for text, mid in pushed.items():
        assert acks[mid]["acks"] == 1, (text, acks[mid])
        assert len(answered(stack, text)) == 1, text
        assert answered(stack, text)[0]["via"] == "session"


def test_both_replicas_connect_and_share_the_messages(ding: Stack) -> None:
    both_connected(ding)
    pushed, used = {}, set()
    for i in range(6):
        text = f"spread {i} {secrets.token_hex(3)}"
        resp = push(ding, text)
        assert resp.status_code == 200, resp.text
        pushed[text] = resp.json()["messageId"]
        used.add(resp.json()["connection"])
    assert len(used) == 2  # spread over both replicas' connections
    check_each_once(ding, pushed)
    assert ding.sim_stats().get("dingtalk_stream_unknown_acks", 0) == 0


def test_an_answer_after_the_session_webhook_expired_goes_through_the_robot_api(ding: Stack) -> None:
    both_connected(ding)
    text = f"answered late {secrets.token_hex(3)}"
    resp = push(ding, text, session_minutes=0)  # the webhook is already past its life
    assert resp.status_code == 200
    [answer] = ding.wait_for(lambda: answered(ding, text), 30, "the answer")
    assert answer["via"] == "api" and answer["chat"] == "alice"
    assert sim(ding, "acks")[resp.json()["messageId"]]["acks"] == 1


def test_a_replica_killed_loses_nothing_sent_to_the_survivor(ding: Stack) -> None:
    both_connected(ding)
    before = {c["id"] for c in conns(ding)}
    victim = ding.services["connector2"]
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    victim.proc = None
    ding.wait_for(lambda: len(conns(ding)) == 1, 30, "the killed replica's socket to go")
    [survivor] = [c["id"] for c in conns(ding)]
    assert survivor in before
    pushed = {}
    for i in range(4):
        text = f"after the kill {i} {secrets.token_hex(3)}"
        resp = push(ding, text)
        assert resp.status_code == 200 and resp.json()["connection"] == survivor, resp.text
        pushed[text] = resp.json()["messageId"]
    check_each_once(ding, pushed)
    victim.start()
    both_connected(ding)


def test_a_socket_closed_by_the_gateway_comes_back(ding: Stack) -> None:
    both_connected(ding)
    [first, second] = [c["id"] for c in conns(ding)]
    sim(ding, "close", bot_id="ding", connection=first)
    ding.wait_for(
        lambda: {c["id"] for c in conns(ding)} - {first, second}, 30, "a new connection after the close"
    )
    both_connected(ding)
    text = f"after the close {secrets.token_hex(3)}"
    resp = push(ding, text)
    assert resp.status_code == 200
    check_each_once(ding, {text: resp.json()["messageId"]})


def test_disconnect_of_every_connection_loses_no_message_sent_during_the_switch(ding: Stack) -> None:
    both_connected(ding)
    sim(ding, "control", disconnect_grace=2.0)
    opened_before = len([e for e in sim(ding, "events") if e["event"] == "opened"])
    pushed: dict[str, str] = {}
    lost: list[str] = []
    stop = threading.Event()

    def pusher() -> None:
        i = 0
        while not stop.is_set():
            text = f"during the switch {i} {secrets.token_hex(3)}"
            resp = push(ding, text)
            if resp.status_code == 200:
                pushed[text] = resp.json()["messageId"]
            else:
                lost.append(resp.text)
            i += 1
            time.sleep(0.05)

    thread = threading.Thread(target=pusher)
    thread.start()
    try:
        time.sleep(0.3)
        assert len(sim(ding, "disconnect", bot_id="ding")["connections"]) == 2
        ding.wait_for(
            lambda: len([e for e in sim(ding, "events") if e["event"] == "closed_after_disconnect"]) >= 2,
            30,
            "the gateway to close both old sockets",
        )
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
        sim(ding, "control", disconnect_grace=10.0)
    assert not lost, lost
    assert len(pushed) >= 5
    check_each_once(ding, pushed)
    # each old socket went only once its replacement was open: never fewer than two connections
    events = [e for e in sim(ding, "events") if e["bot"] == "ding"]
    assert len([e for e in events if e["event"] == "opened"]) == opened_before + 2
    open_now, lowest, started = 0, 99, False
    for e in events:
        if e["event"] == "opened":
            open_now += 1
        elif e["event"].startswith("closed"):
            open_now -= 1
        if e["event"] == "disconnect":
            started = True
        if started:
            lowest = min(lowest, open_now)
    assert lowest >= 2, events
    for name in REPLICAS:
        assert ding.metric(name, "imrelay_connector_events_total", {"outcome": "disconnect"}) >= 1


def test_pings_are_answered_with_their_opaque(ding: Stack) -> None:
    both_connected(ding)
    pongs = ding.sim_stats().get("dingtalk_stream_pongs", 0)
    sim(ding, "control", ping_interval=0.2, ping_timeout=2.0)
    try:
        ding.wait_for(lambda: ding.sim_stats().get("dingtalk_stream_pongs", 0) >= pongs + 6, 20, "pongs")
    finally:
        sim(ding, "control", ping_interval=20.0, ping_timeout=10.0)
    stats = ding.sim_stats()
    assert stats.get("dingtalk_stream_bad_pong", 0) == 0
    assert stats.get("dingtalk_stream_ping_unanswered", 0) == 0


def test_bad_credentials_are_refused_and_a_ticket_is_single_use(ding: Stack) -> None:
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    bad = httpx.post(
        f"{ding.sim_url}/v1.0/gateway/connections/open",
        json={"clientId": APP_KEY, "clientSecret": "wrong", "subscriptions": []},
    )
    assert bad.status_code == 401
    ok = httpx.post(
        f"{ding.sim_url}/v1.0/gateway/connections/open",
        json={"clientId": APP_KEY, "clientSecret": APP_SECRET, "subscriptions": []},
    ).json()

    async def twice() -> None:
        url = f"{ok['endpoint']}?ticket={ok['ticket']}"
        async with connect(url):
            pass
        with pytest.raises(InvalidStatus):
            async with connect(url):
                pass

    asyncio.run(twice())


def test_no_ticket_or_secret_in_the_connectors_logs(ding: Stack) -> None:
    both_connected(ding)
    tickets = httpx.get(f"{ding.sim_url}/sim/tokens", timeout=5).json()
    assert tickets
    for name in REPLICAS:
        log = ding.services[name].log.read_text()
        assert "stream connection up" in log
        assert APP_SECRET not in log
        assert not [t for t in tickets if t in log]


def test_with_jetstream_unavailable_nothing_is_acked(ding: Stack, nats_server: EmbeddedNats) -> None:
    both_connected(ding)

    def not_stored() -> float:
        return sum(
            ding.metric(n, "imrelay_connector_events_total", {"outcome": "not_stored"}) for n in REPLICAS
        )

    before = not_stored()
    nats_server.stop()
    try:
        pushed = {}
        for i in range(2):
            text = f"while JetStream is away {i} {secrets.token_hex(3)}"
            resp = push(ding, text)
            assert resp.status_code == 200, resp.text
            pushed[text] = resp.json()["messageId"]
        ding.wait_for(lambda: not_stored() >= before + 2, 30, "both messages given up")
        acks = sim(ding, "acks")
        assert all(acks[mid]["acks"] == 0 for mid in pushed.values()), acks
    finally:
        nats_server.start()
    # JetStream back: the same connections store and ack again
    text = f"JetStream is back {secrets.token_hex(3)}"

    def delivered() -> bool:
        resp = push(ding, text)
        if resp.status_code != 200:
            return False
        mid = resp.json()["messageId"]
        ding.wait_for(lambda: sim(ding, "acks")[mid]["acks"] or not_stored() > before + 2, 30, "an outcome")
        return bool(sim(ding, "acks")[mid]["acks"])

    ding.wait_for(delivered, 60, "a message stored after JetStream came back")
    ding.wait_for(lambda: answered(ding, text), 30, "its answer")
