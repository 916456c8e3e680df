"""The WeCom AI bot's answer streams against a simulator that enforces the live gateway's stream limits:
no update over 20,480 bytes, a stream expires when not updated for a while (846608) and takes nothing after
``finish``. A long answer arrives in full as several finished streams on the message's ``req_id``; an answer
whose model goes quiet for longer than the expiry is kept alive and still shown in full. In callback mode
no poll answer is over the limit either, and the rest of a long answer comes through ``response_url``."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imrelay.config import parse_settings
from imrelay.natsserver import EmbeddedNats
from imrelay.platforms.wecom_aibot import sim as sim_aibot
from imrelay.platforms.wecom_aibot.config import WeComAIBot

from .stack import KEY, Stack

pytestmark = pytest.mark.nats

BOT_ID, SECRET = "aibStreamLimits01", "stream-limits-secret"
LIMIT = 20480
KEEPALIVE = 8.0  # below the simulator's expiry in the pause test (20 s)


@pytest.fixture(scope="module")
def limits_stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("streamlimits")
    s = Stack.create(root, nats_server)
    s.config["backends"] = {
        "default": {
            "kind": "openai",
            "base_url": f"{s.sim_url}/v1",
            "api_key": "k",
            "model": "m",
            "idle_timeout_seconds": 90,
        }
    }
    s.config["bots"] = [
        {
            "id": "ws",
            "platform": "wecom_aibot",
            "mode": "long_connection",
            "ws_url": s.sim_url.replace("http://", "ws://") + "/ws/aibot",
            "credentials": {"token": "t", "encoding_aes_key": KEY, "bot_id": BOT_ID, "secret": SECRET},
        },
        {
            "id": "cb",
            "platform": "wecom_aibot",
            "credentials": {"token": "aibottoken", "encoding_aes_key": KEY},
        },
    ]
    s.config["connector"] = {
        "heartbeat_seconds": 2,
        "ack_timeout_seconds": 3,
        "stream_keepalive_seconds": KEEPALIVE,
    }
    s.add_service("connector", ["imrelay_ingress.connector"])
    with s.running("sim", "ingress", "worker", "sender", "connector"):
        s.wait_for(
            lambda: httpx.get(f"{s.sim_url}/sim/aibot/connections").json().get(BOT_ID) == 1,
            what="the bot's socket",
        )
        yield s


def push(stack: Stack, text: str) -> str:
    resp = httpx.post(
        f"{stack.sim_url}/sim/aibot/push",
        json={"bot_id": BOT_ID, "text": text, "user": f"u{secrets.token_hex(3)}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["req_id"])


def streams_of(stack: Stack, req_id: str) -> list[dict[str, Any]]:
    """The streams the user sees for one message, in the order they appeared."""
    return sorted((m for m in stack.messages(bot="ws") if m.get("req_id") == req_id), key=lambda m: m["seq"])


def long_text(size: int) -> str:
    """Paragraphs of mixed ASCII and three-byte characters, ``size`` UTF-8 bytes or a little more."""
    paragraphs: list[str] = []
    n = 0
    while sum(len(p.encode()) + 2 for p in paragraphs) < size:
        words = " ".join(f"word{n}-{i} 流式回答" for i in range(12))
        paragraphs.append(f"Paragraph {n}: {words}.")
        n += 1
    return "\n\n".join(paragraphs)


def test_an_answer_over_the_limit_arrives_in_full_as_several_finished_streams(limits_stack: Stack) -> None:
    question = long_text(30 * 1024)
    final = f"You said: {question}"
    refused_before = limits_stack.sim_stats().get("aibot_ws_stream_refused", 0)
    req_id = push(limits_stack, question)
    got = limits_stack.wait_for(
        lambda: (
            (s := streams_of(limits_stack, req_id))
            and all(m["finish"] for m in s)
            and "".join(m["content"] for m in s) == final
            and s
        ),
        timeout=60,
        what="the whole answer",
    )
    sizes = [len(m["content"].encode()) for m in got]
    print(f"\n{len(final.encode())}-byte answer shown as {len(got)} streams of {sizes} bytes")
    assert len(got) >= 2 and all(m["via"] == "stream" for m in got)
    assert len({m["stream_id"] for m in got}) == len(got)
    # no update of any stream was ever over the limit, and none was refused
    assert max(len(c.encode()) for m in got for _, c in m["history"]) <= LIMIT
    stats = limits_stack.sim_stats()
    assert stats.get("aibot_ws_too_large", 0) == 0
    assert stats.get("aibot_ws_stream_refused", 0) == refused_before
    # every stream but the last ends on a paragraph break: the answer is cut where it reads well
    assert all(m["content"].endswith("\n\n") for m in got[:-1])


def test_an_answer_whose_model_pauses_past_the_stream_expiry_is_still_shown_in_full(
    limits_stack: Stack,
) -> None:
    sim = limits_stack.sim_url
    httpx.post(f"{sim}/sim/aibot/streams", json={"expiry_seconds": 20}).raise_for_status()
    httpx.post(f"{sim}/sim/llm", json={"pause_after": 3, "pause_seconds": 45}).raise_for_status()
    try:
        text = f"an answer with a long think in the middle {secrets.token_hex(2)}"
        final = f"You said: {text}"
        refused_before = limits_stack.sim_stats().get("aibot_ws_stream_refused", 0)
        req_id = push(limits_stack, text)
        [stream] = limits_stack.wait_for(
            lambda: [m for m in streams_of(limits_stack, req_id) if m["finish"]],
            timeout=90,
            what="the answer after the pause",
        )
    finally:
        httpx.post(f"{sim}/sim/llm", json={"pause_after": None, "pause_seconds": 0}).raise_for_status()
        httpx.post(f"{sim}/sim/aibot/streams", json={"expiry_seconds": 360}).raise_for_status()
    assert stream["content"] == final and stream["via"] == "stream"  # in the stream, not a fallback
    assert limits_stack.sim_stats().get("aibot_ws_stream_refused", 0) == refused_before
    times = [t for t, _ in stream["history"]]
    assert times[-1] - times[0] > 40  # the pause really happened, and the stream outlived it
    assert (
        limits_stack.metric("connector", "imrelay_connector_events_total", {"outcome": "stream_keepalive"})
        >= 3
    )


def test_callback_polls_stay_within_the_limit_and_the_rest_comes_through_response_url(
    limits_stack: Stack,
) -> None:
    bot = parse_settings(limits_stack.config, {}).bot("cb")
    assert isinstance(bot, WeComAIBot)

    def post(query: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        return httpx.post(
            f"{limits_stack.ingress_url}/callback/cb?{query}", content=body, headers=headers, timeout=10
        )

    question = long_text(30 * 1024)
    final = f"You said: {question}"
    user = f"u{secrets.token_hex(3)}"
    first = post(
        *sim_aibot.message_callback(
            bot, question, user, secrets.token_hex(16), "", time.time(), limits_stack.sim_url
        )
    )
    sid = sim_aibot.read_reply(bot, first.content)["stream"]["id"]
    polled: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # read_reply refuses a stream over 20,480 bytes, as WeCom would
        stream = sim_aibot.read_reply(
            bot, post(*sim_aibot.refresh_callback(bot, sid, user, time.time())).content
        )["stream"]
        polled.append(stream["content"])
        if stream["finish"]:
            break
        time.sleep(0.2)
    shown = polled[-1]
    assert final.startswith(shown) and 0 < len(shown.encode()) <= LIMIT and shown.endswith("\n\n")
    rest = limits_stack.wait_for(
        lambda: [
            m
            for m in limits_stack.messages(platform="wecom_aibot")
            if m.get("via") == "response_url"
            and final.endswith(m["content"])
            and shown + m["content"] == final
        ],
        what="the rest through response_url",
    )
    assert len(rest) == 1
