"""Streaming platforms show the answer growing: several updates, each a prefix of the answer (nothing
duplicated or lost), and a final text equal to the backend's whole answer."""

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
from imrelay.platforms.discord.sim import public_key_for
from imrelay_sim.client import build_request

from .stack import Stack
from .test_platforms_e2e import discord_token

pytestmark = pytest.mark.nats

SEED = secrets.token_hex(32)
WORDS = "streaming answers should grow smoothly in front of the reader word by word"


@pytest.fixture(scope="module")
def streaming(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = pytest.MonkeyPatch()  # the seed is this module's own: later tests must not see it
    env.setenv("DISCORD_SIM_SEED", SEED)
    root: Path = tmp_path_factory.mktemp("streaming")
    s = Stack.create(root, nats_server, extra_env={"DISCORD_SIM_SEED": SEED})
    sim = s.sim_url
    s.config["backends"] = {
        "default": {"kind": "openai", "base_url": f"{sim}/v1", "api_key": "sk", "model": "m"}
    }
    s.config["bots"] = [
        {
            "id": "fs",
            "platform": "feishu",
            "api_base": sim,
            "credentials": {
                "app_id": "cli_stream",
                "app_secret": "s",
                "encrypt_key": "k",
                "verification_token": "v",
            },
        },
        {
            "id": "dc",
            "platform": "discord",
            "api_base": sim,
            "credentials": {
                "application_id": "4242",
                "public_key": public_key_for(SEED),
                "bot_token": "unused",
            },
        },
    ]
    try:
        with s.running():
            httpx.post(f"{sim}/sim/llm", json={"token_delay": 0.25}).raise_for_status()
            yield s
    finally:
        env.undo()


def ask(stack: Stack, bot_id: str, text: str) -> str:
    bot = parse_settings(stack.config, {}).bot(bot_id)
    assert bot is not None
    msg_id = str(secrets.randbelow(2**40))
    query, headers, body = build_request(
        bot, text, f"u{secrets.token_hex(3)}", msg_id, time.time(), stack.sim_url
    )
    assert (
        httpx.post(f"{stack.ingress_url}/callback/{bot_id}", content=body, headers=headers).status_code == 200
    )
    return msg_id


def assert_grew(history: list[list[Any]], final: str, cursor: str = "") -> None:
    shown = [str(content).removesuffix(cursor) for _, content in history]
    assert len(shown) >= 4, shown  # several updates before the final one
    assert all(final.startswith(s) for s in shown), shown  # each a prefix: nothing doubled or lost
    assert shown == sorted(shown, key=len)  # only ever growing
    assert shown[-1] == final


def test_discord_edits_the_answer_as_it_grows(streaming: Stack) -> None:
    msg_id = ask(streaming, "dc", WORDS)
    final = f"You said: {WORDS}"
    [original] = streaming.wait_for(
        lambda: (m := streaming.messages(token=discord_token(msg_id))) and m[0]["content"] == final and m,
        timeout=30,
        what="the final answer",
    )
    assert_grew(original["history"], final, cursor=" ▌")


def test_feishu_card_streams_then_stops_streaming(streaming: Stack) -> None:
    msg_id = ask(streaming, "fs", WORDS)
    final = f"You said: {WORDS}"
    [card] = streaming.wait_for(
        lambda: (
            (m := streaming.messages(reply_to=f"om_{msg_id}"))
            and m[0]["content"] == final
            and not m[0]["streaming"]
            and m
        ),
        timeout=30,
        what="the final card",
    )
    assert card["msgtype"] == "interactive" and card["updates"] >= 4
    assert_grew(card["history"], final)
    assert streaming.metric("sender", "imrelay_deliveries_total", {"outcome": "update"}) >= 4


def test_first_sight_of_an_answer_is_counted_once_across_sender_replicas(streaming: Stack) -> None:
    """With two sender replicas a reply's edits and its final part may be handled by different ones: the
    end-to-end first-reply histogram still gets one observation per reply."""

    def observed() -> float:
        return sum(
            streaming.metric(name, "imrelay_first_reply_seconds_count", {}) for name in ("sender", "sender2")
        )

    [replica] = streaming.add_replicas("sender", 1)
    streaming.start(replica)
    try:
        before = observed()
        finals = []
        for n in range(4):
            msg_id = ask(streaming, "dc", f"{WORDS} {n}")
            finals.append((msg_id, f"You said: {WORDS} {n}"))
        for msg_id, final in finals:
            streaming.wait_for(
                lambda msg_id=msg_id, final=final: (
                    (m := streaming.messages(token=discord_token(msg_id))) and m[0]["content"] == final
                ),
                timeout=60,
                what="the final answer",
            )
        assert observed() - before == len(finals)
    finally:
        streaming.services[replica].stop()
