"""Feishu, Lark, DingTalk, QQ and Discord end to end: the simulator sends the platform's signed callback,
the answer arrives through the platform's reply API exactly once, and a platform retry of the same event
is answered once."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imrelay.config import parse_settings
from imrelay.natsserver import EmbeddedNats
from imrelay.platforms.discord.sim import public_key_for
from imrelay_sim.client import build_request

from .stack import Stack

pytestmark = pytest.mark.nats

SEED = secrets.token_hex(32)


@pytest.fixture(scope="module")
def stack(nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = pytest.MonkeyPatch()  # the seed is this module's own: later tests must not see it
    env.setenv("DISCORD_SIM_SEED", SEED)
    root: Path = tmp_path_factory.mktemp("platforms")
    s = Stack.create(root, nats_server, extra_env={"DISCORD_SIM_SEED": SEED})
    sim = s.sim_url
    s.config["bots"] = [
        {
            "id": "fs",
            "platform": "feishu",
            "api_base": sim,
            "credentials": {
                "app_id": "cli_sim01",
                "app_secret": "fs-secret",
                "encrypt_key": "sim-encrypt-key",
                "verification_token": "sim-verification-token",
            },
        },
        {
            "id": "lk",
            "platform": "lark",
            "api_base": sim,
            "credentials": {
                "app_id": "cli_sim02",
                "app_secret": "lk-secret",
                "encrypt_key": "lark-encrypt-key",
                "verification_token": "lark-token",
            },
        },
        {
            "id": "dt",
            "platform": "dingtalk",
            "api_base": sim,
            "credentials": {"app_key": "dingsim01", "app_secret": "dt-secret"},
        },
        {
            "id": "qqbot",
            "platform": "qq",
            "api_base": sim,
            "auth_base": sim,
            "credentials": {"app_id": "1020304", "app_secret": "qqsecret0123456789"},
        },
        {
            "id": "dc",
            "platform": "discord",
            "api_base": sim,
            "credentials": {
                "application_id": "998877",
                "public_key": public_key_for(SEED),
                "bot_token": "unused",
            },
        },
    ]
    try:
        with s.running():
            yield s
    finally:
        env.undo()


def post(stack: Stack, bot_id: str, text: str, user: str, msg_id: str, chat: str = "") -> httpx.Response:
    bot = parse_settings(stack.config, {}).bot(bot_id)
    assert bot is not None
    query, headers, body = build_request(bot, text, user, msg_id, time.time(), stack.sim_url, chat)
    return httpx.post(
        f"{stack.ingress_url}/callback/{bot_id}" + (f"?{query}" if query else ""),
        content=body,
        headers=headers,
        timeout=10,
    )


def discord_token(msg_id: str) -> str:
    return "aW50ZXJhY3Rpb24" + hashlib.sha256(msg_id.encode()).hexdigest()[:40]


# bot id -> (what the ingress answers, where the answer is found for a message id and user)
PLATFORMS: dict[str, tuple[Any, Callable[[str, str], dict[str, str]]]] = {
    "fs": ({"msg": "success"}, lambda m, u: {"reply_to": f"om_{m}"}),
    "lk": ({"msg": "success"}, lambda m, u: {"reply_to": f"om_{m}"}),
    "dt": ({}, lambda m, u: {"chat": f"cid_{u}"}),
    "qqbot": ({"op": 12}, lambda m, u: {"reply_to": f"ROBOT1.0_{m}"}),
    "dc": ({"type": 5}, lambda m, u: {"token": discord_token(m)}),
}


@pytest.mark.parametrize("bot_id", list(PLATFORMS))
def test_answered_once_and_a_retry_is_not_answered_again(stack: Stack, bot_id: str) -> None:
    ack, where = PLATFORMS[bot_id]
    user, msg_id = f"u{secrets.token_hex(4)}", str(secrets.randbelow(2**40))
    text = f"question for {bot_id} 你好"
    resp = post(stack, bot_id, text, user, msg_id)
    assert resp.status_code == 200 and resp.json() == ack
    # streaming platforms show the answer growing: wait for the whole of it
    found = stack.wait_for(
        lambda: (m := stack.messages(bot=bot_id, **where(msg_id, user))) and m[-1]["content"] == text and m,
        what="the answer",
    )
    assert [m["content"] for m in found] == [text]
    # the platform retries the same event: acked, not answered again
    assert post(stack, bot_id, text, user, msg_id).status_code == 200
    sentinel_user, sentinel_id = f"s{secrets.token_hex(4)}", str(secrets.randbelow(2**40))
    post(stack, bot_id, "sentinel", sentinel_user, sentinel_id)
    stack.wait_for(
        lambda: (
            (m := stack.messages(bot=bot_id, **where(sentinel_id, sentinel_user)))
            and m[-1]["content"] == "sentinel"
        ),
        what="the sentinel answer",
    )
    assert len(stack.messages(bot=bot_id, **where(msg_id, user))) == 1


def test_dingtalk_group_answer_mentions_the_asker(stack: Stack) -> None:
    user, chat = f"u{secrets.token_hex(4)}", f"cidgroup{secrets.token_hex(4)}"
    post(stack, "dt", "group question", user, str(secrets.randbelow(2**40)), chat=chat)
    [answer] = stack.wait_for(lambda: stack.messages(bot="dt", chat=chat), what="the group answer")
    assert answer["at_users"] == [user] and answer["content"] == f"@{user} group question"


def test_feishu_group_mention_is_stripped_for_the_model(stack: Stack) -> None:
    msg_id = str(secrets.randbelow(2**40))
    post(stack, "fs", "what is JetStream?", f"u{secrets.token_hex(4)}", msg_id, chat="oc_group1")
    [answer] = stack.wait_for(
        lambda: (
            (m := stack.messages(bot="fs", reply_to=f"om_{msg_id}"))
            and not m[0].get("streaming", False)
            and m
        ),
        what="the finished answer",
    )
    assert answer["content"] == "what is JetStream?"  # echo of the text without "@_user_1"


def test_discord_long_answer_edits_the_original_then_follows_up(stack: Stack) -> None:
    msg_id = str(secrets.randbelow(2**40))
    text = " ".join(["lorem"] * 500)  # 2999 characters: two Discord messages
    post(stack, "dc", text, f"u{secrets.token_hex(4)}", msg_id)
    token = discord_token(msg_id)
    msgs = stack.wait_for(
        lambda: (
            (m := stack.messages(token=token)) and len(m) == 2 and not m[0]["content"].endswith("▌") and m
        ),
        what="original + follow-up",
    )
    assert [m["kind"] for m in msgs] == ["original", "followup"]
    assert all(len(m["content"]) <= 2000 for m in msgs)
    assert msgs[0]["content"] + msgs[1]["content"] == text


def test_qq_answer_beyond_five_parts_is_cut_to_five(stack: Stack) -> None:
    msg_id = str(secrets.randbelow(2**40))
    text = "。".join(["这是一个很长的回答"] * 900)  # about 24 000 bytes: more than five 4000-byte parts
    post(stack, "qqbot", text, f"u{secrets.token_hex(4)}", msg_id)
    msgs = stack.wait_for(
        lambda: (m := stack.messages(reply_to=f"ROBOT1.0_{msg_id}")) and len(m) == 5 and m,
        what="five replies",
    )
    assert [m["msg_seq"] for m in msgs] == [1, 2, 3, 4, 5]
    assert msgs[-1]["content"].endswith("(answer shortened)")


def test_dingtalk_answers_through_the_robot_api_once_the_session_webhook_expired(stack: Stack) -> None:
    from imrelay.platforms.dingtalk import sim as sim_dingtalk
    from imrelay.platforms.dingtalk.config import DingTalkBot

    bot = parse_settings(stack.config, {}).bot("dt")
    assert isinstance(bot, DingTalkBot)
    user = f"u{secrets.token_hex(4)}"
    headers, body = sim_dingtalk.callback(
        bot,
        "late question",
        user,
        f"cid_{user}",
        False,
        f"msg{secrets.token_hex(6)}",
        time.time(),
        stack.sim_url,
        session_minutes=0,
    )
    assert httpx.post(f"{stack.ingress_url}/callback/dt", content=body, headers=headers).status_code == 200
    [answer] = stack.wait_for(lambda: stack.messages(bot="dt", chat=user), what="the API answer")
    assert answer["via"] == "api" and answer["content"] == "late question"
