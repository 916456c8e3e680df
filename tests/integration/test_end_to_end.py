"""The walking skeleton end to end: simulator -> signed, encrypted callback -> ingress -> JetStream ->
llm-worker (echo) -> JetStream -> sender -> simulator, with real processes and a real nats-server."""

from __future__ import annotations

import json
import secrets
import time

import httpx
import nats
import pytest

from imrelay import subjects
from imrelay.config import parse_settings
from imrelay_sim.client import build_callback

from .stack import Stack

pytestmark = pytest.mark.nats


def send(
    stack: Stack, text: str, user: str, msg_id: str | None = None, bot_id: str = "app", chat: str = ""
) -> httpx.Response:
    settings = parse_settings(stack.config, {})
    bot = settings.bot(bot_id)
    assert bot is not None
    query, body = build_callback(
        bot, text, user, msg_id or str(secrets.randbelow(2**62)), int(time.time()), stack.sim_url, chat=chat
    )
    return httpx.post(
        f"{stack.ingress_url}/callback/{bot.id}?{query}",
        content=body,
        headers={"Content-Type": "text/xml"},
        timeout=10,
    )


def user() -> str:
    return f"u{secrets.token_hex(4)}"


def test_message_is_answered_exactly_once(stack: Stack) -> None:
    who = user()
    resp = send(stack, "What is JetStream? 你好", who)
    assert resp.status_code == 200 and resp.content == b""
    msgs = stack.wait_for(lambda: stack.messages(touser=who), what="the answer")
    assert [m["content"] for m in msgs] == ["What is JetStream? 你好"]
    assert msgs[0]["msgtype"] == "text" and msgs[0]["agent_id"] == "1000002"
    # a later message for another user proves the pipeline moved on; still one answer for `who`
    other = user()
    send(stack, "sentinel", other)
    stack.wait_for(lambda: stack.messages(touser=other), what="the sentinel answer")
    assert len(stack.messages(touser=who)) == 1


def test_platform_retry_gets_no_second_answer(stack: Stack) -> None:
    who = user()
    before = stack.metric("ingress", "imrelay_callbacks_total", {"outcome": "duplicate"})
    msg_id = str(secrets.randbelow(2**62))
    for _ in range(3):  # WeCom tries three times when it does not see a timely ack
        assert send(stack, "retried question", who, msg_id).status_code == 200
    stack.wait_for(lambda: stack.messages(touser=who), what="the answer")
    assert stack.metric("ingress", "imrelay_callbacks_total", {"outcome": "duplicate"}) == before + 2
    other = user()
    send(stack, "sentinel", other)
    stack.wait_for(lambda: stack.messages(touser=other), what="the sentinel answer")
    assert len(stack.messages(touser=who)) == 1


def test_3000_byte_answer_arrives_as_two_messages_in_order(stack: Stack) -> None:
    who = user()
    text = " ".join(f"word{i:04d}" for i in range(334))[:2990] + " 结束。"
    assert len(text.encode()) >= 3000
    send(stack, text, who)
    msgs = stack.wait_for(lambda: (m := stack.messages(touser=who)) and len(m) >= 2 and m, what="two parts")
    assert len(msgs) == 2
    assert msgs[0]["seq"] < msgs[1]["seq"]
    assert all(len(m["content"].encode()) <= 2048 for m in msgs)
    assert msgs[0]["content"] + msgs[1]["content"] == text


def test_expired_token_is_refreshed_once_and_the_answer_delivered(stack: Stack) -> None:
    warm = user()
    send(stack, "warm up", warm)
    stack.wait_for(lambda: stack.messages(touser=warm), what="warm-up answer")
    issued = stack.sim_stats().get("tokens_issued", 0)
    stack.control(expire_tokens=True)  # WeCom invalidated the token early: 42001 on the next send
    who = user()
    send(stack, "after expiry", who)
    msgs = stack.wait_for(lambda: stack.messages(touser=who), what="the answer")
    assert [m["content"] for m in msgs] == ["after expiry"]
    assert stack.sim_stats()["tokens_issued"] == issued + 1


def test_transient_failures_are_retried_and_delivered_once(stack: Stack) -> None:
    stack.control(fail_next=[-1, 502, 45009])
    who = user()
    send(stack, "flaky platform", who)
    msgs = stack.wait_for(lambda: stack.messages(touser=who), what="the answer")
    assert [m["content"] for m in msgs] == ["flaky platform"]
    assert stack.metric("sender", "imrelay_deliveries_total", {"outcome": "retry"}) >= 3
    assert stack.metric("sender", "imrelay_rate_limit_wait_seconds_count", {}) >= 1


async def test_permanent_failure_goes_to_the_dead_letter_subject(stack: Stack) -> None:
    nc = await nats.connect(stack.nats.url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            subjects.dlq_subject("sender"),
            stream=subjects.STREAM_DLQ,
            deliver_policy=nats.js.api.DeliverPolicy.NEW,
        )
        stack.control(fail_next=[81013])
        who = user()
        send(stack, "to nobody", who)
        msg = await sub.next_msg(timeout=20)
        headers = msg.headers or {}
        assert headers[subjects.HDR_DLQ_CODE] == "81013"
        assert headers[subjects.HDR_DLQ_STAGE] == "sender"
        assert json.loads(msg.data)["recipient"]["id"] == who
        assert stack.messages(touser=who) == []
    finally:
        await nc.close()


def test_worker_restart_loses_nothing(stack: Stack) -> None:
    worker = stack.services["worker"]
    worker.stop()
    who = user()
    assert send(stack, "sent while the worker was down", who).status_code == 200
    worker.start()
    msgs = stack.wait_for(lambda: stack.messages(touser=who), what="the answer after restart")
    assert [m["content"] for m in msgs] == ["sent while the worker was down"]


def test_admin_port_serves_metrics_and_probes(stack: Stack) -> None:
    for name in ("ingress", "worker", "sender"):
        assert httpx.get(f"{stack.admin_url(name)}/healthz").status_code == 200
        assert httpx.get(f"{stack.admin_url(name)}/readyz").status_code == 200
        assert "imrelay_" in httpx.get(f"{stack.admin_url(name)}/metrics").text
    assert stack.metric("ingress", "imrelay_callbacks_total", {"outcome": "accepted"}) >= 1
    assert stack.metric("worker", "imrelay_llm_duration_seconds_count", {"outcome": "ok"}) >= 1
    assert stack.metric("sender", "imrelay_first_reply_seconds_count", {}) >= 1
    assert stack.metric("sender", "imrelay_token_refreshes_total", {"outcome": "ok"}) >= 1


def test_group_robot_message_is_answered_in_the_group_mentioning_the_asker(stack: Stack) -> None:
    who, chat = user(), f"wrk{secrets.token_hex(4)}"
    assert send(stack, "when is the offsite?", who, bot_id="robot", chat=chat).status_code == 200
    msgs = stack.wait_for(lambda: stack.messages(bot="robot", chat="robot"), what="robot answer")
    mine = [m for m in msgs if who in m["mentioned_list"]]
    assert [m["content"] for m in mine] == ["when is the offsite?"]  # "@robot " stripped for the model


def test_failing_token_endpoint_is_backed_off_and_the_answer_still_arrives(stack: Stack) -> None:
    before = stack.sim_stats().get("gettoken_faults", 0)
    stack.control(expire_tokens=True, gettoken_fail_next=[502, -1])
    who = user()
    send(stack, "token trouble", who)
    msgs = stack.wait_for(lambda: stack.messages(touser=who), timeout=30, what="the answer")
    assert [m["content"] for m in msgs] == ["token trouble"]
    assert stack.sim_stats()["gettoken_faults"] == before + 2
    assert stack.metric("sender", "imrelay_token_refreshes_total", {"outcome": "error"}) >= 2


def test_group_robot_markdown_answer_mentions_the_asker_inline(stack: Stack) -> None:
    who, chat = user(), f"wrk{secrets.token_hex(4)}"
    send(stack, "**bold** question", who, bot_id="robot-md", chat=chat)
    [answer] = stack.wait_for(lambda: stack.messages(bot="robot-md"), what="the markdown answer")
    assert answer["msgtype"] == "markdown" and answer["content"] == f"<@{who}> **bold** question"
