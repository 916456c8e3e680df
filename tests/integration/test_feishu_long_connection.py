"""A Feishu app over its long connection with two connector replicas (real processes): both hold a socket
(active-active, no lease), events the simulator spreads over both are each acknowledged and answered
exactly once, a re-push with the same message id (a new event id) is not answered again, a socket the
server closes is dialled again, an event pushed while JetStream is down gets no ack and is answered once
after the platform re-pushes it, and a replica killed with SIGKILL loses nothing sent to the survivor."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imrelay.natsserver import EmbeddedNats

from .stack import Stack

pytestmark = pytest.mark.nats

APP_ID, SECRET = "cli_integration01", "feishu-ws-secret"
REPLICAS = ("connector1", "connector2")


@pytest.fixture(scope="module")
def fs_stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("feishu-ws")
    s = Stack.create(root, nats_server)
    s.config["bots"] = [
        {
            "id": "fsws",
            "platform": "feishu",
            "mode": "long_connection",
            "api_base": s.sim_url,
            "credentials": {"app_id": APP_ID, "app_secret": SECRET},
        }
    ]
    s.config["connector"] = {"reconnect_max_seconds": 2, "healthy_seconds": 1}
    for name in REPLICAS:
        s.add_service(name, ["imrelay_ingress.connector"])
    with s.running("sim", "worker", "sender"):
        # the server's settings, as a pong or the discovery carries them: quick pings and reconnects here
        control(s, config={"PingInterval": 2, "ReconnectInterval": 1, "ReconnectNonce": 1}, max_repushes=100)
        s.start(*REPLICAS)
        yield s


def control(stack: Stack, **body: Any) -> None:
    httpx.post(f"{stack.sim_url}/sim/feishu/control", json=body, timeout=5).raise_for_status()


def sockets(stack: Stack) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = (
        httpx.get(f"{stack.sim_url}/sim/feishu/connections", timeout=5).json().get(APP_ID, [])
    )
    return result


def push(stack: Stack, text: str, **extra: Any) -> dict[str, Any]:
    resp = httpx.post(
        f"{stack.sim_url}/sim/feishu/push",
        json={"app_id": APP_ID, "text": text, "user": "ou_alice", **extra},
        timeout=5,
    )
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def delivery(stack: Stack, event_id: str) -> dict[str, Any]:
    [found] = [
        d
        for d in httpx.get(f"{stack.sim_url}/sim/feishu/deliveries", timeout=5).json()
        if d["event_id"] == event_id
    ]
    result: dict[str, Any] = found
    return result


def replies(stack: Stack, message_id: str) -> list[dict[str, Any]]:
    return stack.messages(reply_to=message_id)


def answered(stack: Stack, message_id: str, text: str) -> bool:
    got = replies(stack, message_id)
    return bool(got) and text in str(got[-1]["content"]) and not got[-1].get("streaming")


def events(stack: Stack, outcome: str) -> float:
    return sum(
        stack.metric(n, "imrelay_connector_events_total", {"bot": "fsws", "outcome": outcome})
        for n in REPLICAS
        if stack.services[n].proc is not None
    )


def test_both_replicas_hold_a_socket_and_every_event_is_answered_once(fs_stack: Stack) -> None:
    fs_stack.wait_for(lambda: len(sockets(fs_stack)) == 2, what="a socket from each replica")
    pushed = [push(fs_stack, f"spread {i} {secrets.token_hex(2)}") for i in range(6)]
    texts = [f"spread {i}" for i in range(6)]
    for p, text in zip(pushed, texts, strict=True):
        fs_stack.wait_for(
            lambda p=p, t=text: answered(fs_stack, p["message_id"], t), what=f"the answer to {text}"
        )
    assert {p["socket"] for p in pushed} == {s["device_id"] for s in sockets(fs_stack)}  # spread over both
    for p in pushed:
        d = delivery(fs_stack, p["event_id"])
        assert d["acked_by"] == p["socket"] and d["repushes"] == 0
        assert len(replies(fs_stack, p["message_id"])) == 1
    assert all(s["acked"] >= 3 for s in sockets(fs_stack))


def test_a_repush_with_the_same_message_id_is_not_answered_again(fs_stack: Stack) -> None:
    first = push(fs_stack, "only once please")
    fs_stack.wait_for(lambda: answered(fs_stack, first["message_id"], "only once please"), what="the answer")
    duplicates = events(fs_stack, "duplicate")
    resp = httpx.post(
        f"{fs_stack.sim_url}/sim/feishu/repush", json={"message_id": first["message_id"]}, timeout=5
    )
    again = resp.json()
    assert again["event_id"] != first["event_id"]
    fs_stack.wait_for(lambda: delivery(fs_stack, again["event_id"])["acked_by"], what="the re-push's ack")
    fs_stack.wait_for(lambda: events(fs_stack, "duplicate") > duplicates, what="the duplicate counted")
    assert len(replies(fs_stack, first["message_id"])) == 1


def test_a_socket_the_server_closes_is_dialled_again(fs_stack: Stack) -> None:
    connects = fs_stack.sim_stats()["feishu_ws_connects"]
    httpx.post(f"{fs_stack.sim_url}/sim/feishu/close", json={"app_id": APP_ID, "socket": 0}, timeout=5)
    fs_stack.wait_for(
        lambda: fs_stack.sim_stats()["feishu_ws_connects"] > connects and len(sockets(fs_stack)) == 2,
        what="the closed socket dialled again",
    )
    p = push(fs_stack, "after the reconnect")
    fs_stack.wait_for(lambda: answered(fs_stack, p["message_id"], "after the reconnect"), what="the answer")


def test_no_ack_while_jetstream_is_down_then_answered_once(
    fs_stack: Stack, nats_server: EmbeddedNats
) -> None:
    nats_server.stop()
    try:
        p = push(fs_stack, "while the broker is away")
        fs_stack.wait_for(
            lambda: delivery(fs_stack, p["event_id"])["repushes"] >= 2,
            timeout=30,
            what="re-pushes of the event",
        )
        assert delivery(fs_stack, p["event_id"])["acked_by"] == ""  # never acknowledged unstored
    finally:
        nats_server.start()
    fs_stack.wait_for(
        lambda: delivery(fs_stack, p["event_id"])["acked_by"], timeout=60, what="the ack once NATS is back"
    )
    fs_stack.wait_for(
        lambda: answered(fs_stack, p["message_id"], "while the broker is away"), timeout=60, what="the answer"
    )
    assert len(replies(fs_stack, p["message_id"])) == 1
    assert events(fs_stack, "not_stored") >= 1


def test_a_replica_killed_loses_nothing_sent_to_the_survivor(fs_stack: Stack) -> None:
    fs_stack.wait_for(lambda: len(sockets(fs_stack)) == 2, what="both sockets")
    victim = fs_stack.services["connector2"]
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    victim.proc = None
    fs_stack.wait_for(lambda: len(sockets(fs_stack)) == 1, what="the killed replica's socket gone")
    pushed = [push(fs_stack, f"survivor {i}") for i in range(4)]
    for i, p in enumerate(pushed):
        fs_stack.wait_for(
            lambda p=p, i=i: answered(fs_stack, p["message_id"], f"survivor {i}"), what="an answer"
        )
        assert len(replies(fs_stack, p["message_id"])) == 1
        assert delivery(fs_stack, p["event_id"])["acked_by"] == p["socket"]
