"""The WeCom AI bot in callback mode, end to end: WeCom (the simulator) sends a message, gets the start of a
stream, and its refresh polls see the answer grow and finish — the model's whole answer, exactly."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imrelay.config import parse_settings
from imrelay.natsserver import EmbeddedNats
from imrelay.platforms.wecom_aibot import sim as sim_aibot
from imrelay.platforms.wecom_aibot.config import WeComAIBot

from .stack import KEY, Stack

pytestmark = pytest.mark.nats


@pytest.fixture(scope="module")
def aibot_stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("aibot")
    s = Stack.create(root, nats_server)
    s.config["backends"] = {
        "default": {"kind": "openai", "base_url": f"{s.sim_url}/v1", "api_key": "k", "model": "m"}
    }
    s.config["bots"] = [
        {
            "id": "ai",
            "platform": "wecom_aibot",
            "credentials": {"token": "aibottoken", "encoding_aes_key": KEY},
        }
    ]
    with s.running():
        yield s


def bot(stack: Stack) -> WeComAIBot:
    b = parse_settings(stack.config, {}).bot("ai")
    assert isinstance(b, WeComAIBot)
    return b


def post(stack: Stack, query: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    return httpx.post(f"{stack.ingress_url}/callback/ai?{query}", content=body, headers=headers, timeout=10)


def poll(stack: Stack, sid: str, user: str, timeout: float = 30) -> list[tuple[str, bool]]:
    seen: list[tuple[str, bool]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = post(stack, *sim_aibot.refresh_callback(bot(stack), sid, user, time.time()))
        assert resp.status_code == 200
        stream = sim_aibot.read_reply(bot(stack), resp.content)["stream"]
        assert stream["id"] == sid
        if not seen or seen[-1] != (stream["content"], stream["finish"]):
            seen.append((stream["content"], stream["finish"]))
        if stream["finish"]:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"stream did not finish: {seen}")


def test_refresh_polls_see_the_answer_grow_and_finish(aibot_stack: Stack) -> None:
    httpx.post(f"{aibot_stack.sim_url}/sim/llm", json={"token_delay": 0.3}).raise_for_status()
    try:
        user, msgid = f"u{secrets.token_hex(3)}", secrets.token_hex(16)
        question = "please explain how the stream grows over time"
        resp = post(
            aibot_stack,
            *sim_aibot.message_callback(
                bot(aibot_stack), question, user, msgid, "", time.time(), aibot_stack.sim_url
            ),
        )
        assert resp.status_code == 200
        first = sim_aibot.read_reply(bot(aibot_stack), resp.content)
        assert first["msgtype"] == "stream" and first["stream"]["finish"] is False
        sid = first["stream"]["id"]
        # WeCom retries the same message: the same stream, and no second answer is started
        again = post(
            aibot_stack,
            *sim_aibot.message_callback(
                bot(aibot_stack), question, user, msgid, "", time.time(), aibot_stack.sim_url
            ),
        )
        assert sim_aibot.read_reply(bot(aibot_stack), again.content)["stream"]["id"] == sid
        seen = poll(aibot_stack, sid, user)
    finally:
        httpx.post(f"{aibot_stack.sim_url}/sim/llm", json={"token_delay": 0}).raise_for_status()
    final = f"You said: {question}"
    contents = [c for c, _ in seen if c]
    assert len(contents) >= 3, seen  # the user saw it grow
    assert all(final.startswith(c) for c in contents) and seen[-1] == (final, True)
    reqs = [
        r
        for r in httpx.get(f"{aibot_stack.sim_url}/sim/llm").json()
        if r["messages"][-1]["content"] == question
    ]
    assert len(reqs) == 1


def test_unknown_stream_is_finished_not_an_error(aibot_stack: Stack) -> None:
    seen = poll(aibot_stack, "nosuchstream0000", "someone", timeout=5)
    assert seen[-1][1] is True and "no longer available" in seen[-1][0]
