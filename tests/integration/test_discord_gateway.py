"""A Discord bot over the Gateway (``mode: long_connection``), on real processes: two connector replicas
(one session for the bot at any moment), the simulator's Gateway and channel API, worker and sender.

A mention is answered by a reply that is edited while it grows, ending with the whole answer; a DM too;
the bot's own, other bots' and unmentioned messages are not. A Gateway restart is resumed: events sent
while no socket was open are replayed and answered once, nothing is answered twice. With JetStream gone a
message cannot be stored: Discord has no per-event acknowledgement, so the connector closes the socket
without counting the event's sequence, and the resume after it gets the event again; it is answered once
when JetStream is back. The owner killed with SIGKILL: the other replica identifies and answers."""

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

BOT, APP = "dgw", "123456789012345678"
CURSOR = " ▌"


@pytest.fixture(scope="module")
def gw_stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("discordgw")
    s = Stack.create(root, nats_server, extra_env={"DISCORD_SIM_HEARTBEAT_MS": "1000"})
    s.config["backends"] = {
        "default": {"kind": "openai", "base_url": f"{s.sim_url}/v1", "api_key": "k", "model": "m"}
    }
    s.config["bots"] = [
        {
            "id": BOT,
            "platform": "discord",
            "mode": "long_connection",
            "api_base": s.sim_url,
            "credentials": {
                "application_id": APP,
                "bot_token": "gateway-test-token",
                "public_key": "7b5e10d4ba33abe2ff7dec86cf4de3c0a9175860412afa49313167450d3008c5",
            },
        }
    ]
    s.config["connector"] = {"reconnect_max_seconds": 2, "healthy_seconds": 1}
    s.config["sender"]["max_attempts"] = 8
    for name in ("connector1", "connector2"):
        s.add_service(name, ["imrelay_ingress.connector"])
    with s.running("sim", "worker", "sender", "connector1", "connector2"):
        httpx.post(f"{s.sim_url}/sim/discord/control", json={"identify_interval": 0.5}).raise_for_status()
        yield s


def sessions(stack: Stack) -> dict[str, int]:
    result: dict[str, int] = httpx.get(f"{stack.sim_url}/sim/discord/sessions").json()[BOT]
    return result


def events(stack: Stack, kind: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = httpx.get(f"{stack.sim_url}/sim/discord/events").json()
    return [e for e in got if e["event"] == kind and e["bot"] == BOT]


def push(stack: Stack, text: str, **more: Any) -> dict[str, Any]:
    body = {"bot": BOT, "text": text, "user": "alice", "channel": "555000000000000001", **more}
    resp = httpx.post(f"{stack.sim_url}/sim/discord/push", json=body)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def replies(stack: Stack, msg_id: str) -> list[dict[str, Any]]:
    return stack.messages(bot=BOT, reply_to=msg_id)


def finished(stack: Stack, msg_id: str, final: str) -> list[dict[str, Any]]:
    got = replies(stack, msg_id)
    return got if got and got[0]["content"] == final else []


def control(stack: Stack, **knobs: Any) -> None:
    httpx.post(f"{stack.sim_url}/sim/discord/control", json=knobs).raise_for_status()


def slow_llm(stack: Stack, delay: float) -> None:
    httpx.post(f"{stack.sim_url}/sim/llm", json={"token_delay": delay}).raise_for_status()


def up(stack: Stack) -> None:
    stack.wait_for(lambda: sessions(stack)["on_socket"] == 1, what="the bot's Gateway session")


def test_a_mention_is_answered_by_a_reply_edited_while_it_grows(gw_stack: Stack) -> None:
    up(gw_stack)
    [identified] = events(gw_stack, "identified")[:1]
    assert identified["intents"] == (1 << 9) | (1 << 12)  # GUILD_MESSAGES | DIRECT_MESSAGES, no privileged
    slow_llm(gw_stack, 0.25)
    try:
        text = "tell me something long enough to be streamed in several edits " + secrets.token_hex(2)
        pushed = push(gw_stack, text)
        final = f"You said: {text}"  # the mention is not part of the question
        [reply] = gw_stack.wait_for(lambda: finished(gw_stack, pushed["msg_id"], final), 60, "the answer")
    finally:
        slow_llm(gw_stack, 0)
    history = [content for _, content in reply["history"]]
    assert len(history) >= 3 and reply["edits"] == len(history) - 1  # a reply, then edits
    assert all(h.endswith(CURSOR) and final.startswith(h[: -len(CURSOR)]) for h in history[:-1])
    assert history[-1] == final
    assert reply["chat"] == "555000000000000001"
    assert sessions(gw_stack)["peak"] == 1


def test_dms_are_answered_and_bots_and_unmentioned_messages_are_not(gw_stack: Stack) -> None:
    up(gw_stack)
    ignored = [
        push(gw_stack, "not for the bot", mention=False),
        push(gw_stack, "another bot talking", author_bot=True),
        push(gw_stack, "the bot itself", user_id=APP),
    ]
    text = f"a direct message {secrets.token_hex(2)}"
    dm = push(gw_stack, text, channel="")
    [reply] = gw_stack.wait_for(
        lambda: finished(gw_stack, dm["msg_id"], f"You said: {text}"), 30, "the DM answer"
    )
    assert reply["chat"] == dm["channel_id"]
    # events are handled in order: the ones before the DM were seen, and none was answered
    assert all(replies(gw_stack, p["msg_id"]) == [] for p in ignored)


def test_a_gateway_restart_is_resumed_and_what_was_sent_meanwhile_answered_once(gw_stack: Stack) -> None:
    up(gw_stack)
    before = push(gw_stack, f"before the restart {secrets.token_hex(2)}")
    resumed = len(events(gw_stack, "resumed"))
    identified = len(events(gw_stack, "identified"))
    control(gw_stack, hello_paused=True)  # the Gateway is down: sockets open, but no Hello
    try:
        httpx.post(
            f"{gw_stack.sim_url}/sim/discord/close", json={"bot": BOT, "code": 1001}
        ).raise_for_status()
        gw_stack.wait_for(lambda: sessions(gw_stack)["on_socket"] == 0, what="the socket to close")
        during = [push(gw_stack, f"sent during the outage {i} {secrets.token_hex(2)}") for i in range(3)]
        assert all(p["on_socket"] == 0 and p["sessions"] == 1 for p in during)  # kept for the resume
    finally:
        control(gw_stack, hello_paused=False)
    [event] = gw_stack.wait_for(lambda: events(gw_stack, "resumed")[resumed:], what="the resume")
    assert event["replayed"] >= 3 and event["path"] == "/discord/gateway-resume"
    for p in [before, *during]:
        gw_stack.wait_for(
            lambda p=p: (
                replies(gw_stack, p["msg_id"])
                and not replies(gw_stack, p["msg_id"])[0]["content"].endswith(CURSOR)
            ),
            30,
            "an answer",
        )
    after = push(gw_stack, f"after the resume {secrets.token_hex(2)}")
    gw_stack.wait_for(lambda: replies(gw_stack, after["msg_id"]), 30, "the answer after the resume")
    assert len(events(gw_stack, "identified")) == identified  # resumed, not a new session
    for p in [before, *during, after]:
        assert len(replies(gw_stack, p["msg_id"])) == 1  # answered once each


def owner(stack: Stack) -> str:
    held = [
        n
        for n in ("connector1", "connector2")
        if stack.services[n].proc is not None
        and stack.metric(n, "imrelay_connector_lease_held", {"bot": BOT}) == 1
    ]
    assert len(held) == 1, held
    return held[0]


def test_the_owner_killed_the_other_replica_takes_the_bot_over(gw_stack: Stack) -> None:
    up(gw_stack)
    victim = owner(gw_stack)
    identified = len(events(gw_stack, "identified"))
    proc = gw_stack.services[victim].proc
    assert proc is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gw_stack.services[victim].proc = None
    gw_stack.wait_for(lambda: len(events(gw_stack, "identified")) > identified, 30, "the takeover")
    up(gw_stack)
    text = f"after the takeover {secrets.token_hex(2)}"
    pushed = push(gw_stack, text)
    gw_stack.wait_for(lambda: finished(gw_stack, pushed["msg_id"], f"You said: {text}"), 30, "the answer")
    assert owner(gw_stack) != victim
    assert sessions(gw_stack)["peak"] == 1  # never two sessions on sockets at once
    assert len(replies(gw_stack, pushed["msg_id"])) == 1


def test_jetstream_gone_the_event_is_not_lost_the_resume_replays_it(
    gw_stack: Stack, nats_server: EmbeddedNats
) -> None:
    up(gw_stack)
    for name in ("connector1", "connector2"):  # one replica: the one holding the session resumes it
        if gw_stack.services[name].proc is not None and name != owner(gw_stack):
            gw_stack.services[name].stop()
    resumed = len(events(gw_stack, "resumed"))
    identified = len(events(gw_stack, "identified"))
    nats_server.stop()
    try:
        pushed = push(gw_stack, f"while JetStream is away {secrets.token_hex(2)}")
        # the connector cannot store it: it closes the socket (keeping the session) without counting the
        # event's sequence
        gw_stack.wait_for(lambda: "not stored" in connector_logs(gw_stack), 30, "the failed store")
        assert replies(gw_stack, pushed["msg_id"]) == []
    finally:
        nats_server.start()
    # the session is resumed from the last stored sequence: the Gateway sends the event again
    gw_stack.wait_for(
        lambda: any(e["replayed"] >= 1 for e in events(gw_stack, "resumed")[resumed:]),
        60,
        "a resume replaying the event",
    )
    gw_stack.wait_for(lambda: replies(gw_stack, pushed["msg_id"]), 60, "the answer once JetStream is back")
    later = push(gw_stack, f"later {secrets.token_hex(2)}")
    gw_stack.wait_for(lambda: replies(gw_stack, later["msg_id"]), 30, "a later answer")
    assert len(replies(gw_stack, pushed["msg_id"])) == 1
    assert len(events(gw_stack, "identified")) == identified  # the same session, resumed
    assert "gateway-test-token" not in connector_logs(gw_stack)


def connector_logs(stack: Stack) -> str:
    return "".join(
        stack.services[n].log.read_text()
        for n in ("connector1", "connector2")
        if stack.services[n].log.exists()
    )
