"""The Discord Gateway's pure parts: frames, heartbeat jitter and acknowledgement tracking, the resume
decision, which messages are for the bot and what they become; and the delivery of a reply to a Gateway
message (a reply created once, then edited; nonce; rate-limit headers)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from imrelay.errors import RateLimitedError
from imrelay.events import Chat, ChatType, ReplyChunk, Sender
from imrelay.platforms.discord import gateway as gw
from imrelay.platforms.discord.delivery import CURSOR, DiscordDelivery, nonce, quiet_for
from imrelay.platforms.discord.handle import DiscordHandle

BOT_USER = "111111111111111111"


def test_frames() -> None:
    ident = json.loads(gw.identify("tok"))
    assert ident["op"] == 2 and ident["d"]["token"] == "tok"
    assert (
        ident["d"]["intents"] == 4608
    )  # GUILD_MESSAGES (1<<9) | DIRECT_MESSAGES (1<<12), nothing privileged
    assert ident["d"]["properties"]["os"]
    assert json.loads(gw.resume("tok", "sess", 42)) == {
        "op": 6,
        "d": {"token": "tok", "session_id": "sess", "seq": 42},
    }
    assert json.loads(gw.heartbeat(None)) == {"op": 1, "d": None}
    assert json.loads(gw.heartbeat(7)) == {"op": 1, "d": 7}


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("wss://gateway.discord.gg", "wss://gateway.discord.gg/?v=10&encoding=json"),
        ("wss://gateway.discord.gg/", "wss://gateway.discord.gg/?v=10&encoding=json"),
        ("ws://127.0.0.1:8090/discord/gateway", "ws://127.0.0.1:8090/discord/gateway?v=10&encoding=json"),
    ],
)
def test_socket_url(base: str, url: str) -> None:
    assert gw.gateway_socket_url(base) == url


def test_first_heartbeat_is_jittered_within_the_interval() -> None:
    assert gw.first_beat_delay(41.25, lambda: 0.0) == 0.0
    assert gw.first_beat_delay(41.25, lambda: 0.5) == pytest.approx(20.625)
    assert all(0 <= gw.first_beat_delay(41.25) < 41.25 for _ in range(100))


def test_a_heartbeat_without_ack_means_a_zombie() -> None:
    beats = gw.Beats()
    assert beats.may_beat()
    beats.beat()
    assert not beats.may_beat()  # the previous one was never acknowledged: close and resume
    beats.ack()
    assert beats.may_beat()
    beats.beat()
    beats.ack()
    assert (beats.sent, beats.acked) == (2, 2)


def session(resumable: bool = True) -> gw.Session:
    return gw.Session("s1", "wss://resume", 5) if resumable else gw.Session()


@pytest.mark.parametrize(
    ("code", "resumable", "expected"),
    [
        (None, True, gw.Next.RESUME),  # dropped without a close frame
        (1001, True, gw.Next.RESUME),  # a Gateway restart
        (4000, True, gw.Next.RESUME),
        (4008, True, gw.Next.RESUME),
        (4000, False, gw.Next.IDENTIFY),  # nothing to resume
        (4007, True, gw.Next.IDENTIFY),  # invalid seq
        (4009, True, gw.Next.IDENTIFY),  # session timed out
        (4004, True, gw.Next.STOP),
        (4010, True, gw.Next.STOP),
        (4011, True, gw.Next.STOP),
        (4012, True, gw.Next.STOP),
        (4013, True, gw.Next.STOP),
        (4014, False, gw.Next.STOP),
    ],
)
def test_after_close(code: int | None, resumable: bool, expected: gw.Next) -> None:
    assert gw.after_close(code, session(resumable)) is expected


def test_after_invalid_session() -> None:
    assert gw.after_invalid_session(True, session()) is gw.Next.RESUME
    assert gw.after_invalid_session(False, session()) is gw.Next.IDENTIFY
    assert gw.after_invalid_session(True, session(False)) is gw.Next.IDENTIFY


def test_fatal_closes_say_what_to_fix() -> None:
    assert "credentials.bot_token" in gw.FATAL_CLOSES[4004]
    assert "privileged" in gw.FATAL_CLOSES[4014]
    assert set(gw.FATAL_CLOSES) == {4004, 4010, 4011, 4012, 4013, 4014}


def test_the_sequence_only_moves_forward() -> None:
    s = gw.Session()
    s.stored(None)
    assert s.seq is None
    s.stored(3)
    s.stored(2)
    assert s.seq == 3
    s.forget()
    assert (s.session_id, s.resume_url, s.seq, s.resumable) == ("", "", None, False)


def message(**over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "id": "900",
        "channel_id": "chan",
        "guild_id": "guild",
        "author": {"id": "222", "username": "alice", "global_name": "Alice"},
        "content": f"<@{BOT_USER}> what is   up?",
        "mentions": [{"id": BOT_USER, "bot": True}],
    }
    return m | over


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (f"<@{BOT_USER}> hello", "hello"),
        (f"<@!{BOT_USER}> hello", "hello"),  # the older nickname form
        (f"hello <@{BOT_USER}>, there", "hello , there"),
        ("hi <@333> and <@" + BOT_USER + ">", "hi <@333> and"),  # other users' mentions stay
    ],
)
def test_strip_mention(content: str, text: str) -> None:
    assert gw.strip_mention(content, BOT_USER) == text


@pytest.mark.parametrize(
    ("msg", "answered"),
    [
        (message(), True),
        (message(mentions=[], content=f"<@{BOT_USER}> hi"), True),  # the mention in the text
        (message(guild_id=None, content="a DM", mentions=[]), True),
        (message(mentions=[], content="no mention"), False),
        (message(author={"id": BOT_USER, "username": "me"}), False),  # the bot's own
        (message(author={"id": "444", "bot": True}), False),  # another bot
        (message(webhook_id="55"), False),
        (message(author={}), False),
    ],
)
def test_which_messages_are_for_the_bot(msg: dict[str, Any], answered: bool) -> None:
    assert gw.for_bot(msg, BOT_USER) is answered


def test_normalize_a_mention() -> None:
    m = gw.normalize(message(), "dgw", "app1", BOT_USER, 1_700_000_000)
    assert m.platform_message_id == "discord:message:900"
    assert m.text == "what is up?" and m.mentioned
    assert m.chat == Chat(id="chan", type=ChatType.GROUP) and m.sender.name == "Alice"
    assert m.reply_handle == DiscordHandle(
        application_id="app1", channel_id="chan", message_id="900", guild_id="guild"
    )
    assert gw.normalize(message(), "dgw", "app1", BOT_USER, 1).id == m.id  # a replay is the same message
    dm = gw.normalize(message(guild_id=None, content="hi"), "dgw", "app1", BOT_USER, 1)
    assert dm.chat.type is ChatType.DIRECT
    with pytest.raises(ValueError, match="lacks"):
        gw.normalize(message(id=""), "dgw", "app1", BOT_USER, 1)


def test_a_handle_needs_somewhere_to_answer() -> None:
    with pytest.raises(ValueError, match="interaction_token"):
        DiscordHandle(application_id="1", channel_id="c")
    assert DiscordHandle(application_id="1", channel_id="c", message_id="m").is_message_reply
    assert not DiscordHandle(application_id="1", interaction_token="t").is_message_reply


# ---- the delivery of a reply to a Gateway message -------------------------------------------------------


def chunk(**over: Any) -> ReplyChunk:
    base: dict[str, Any] = {
        "reply_id": "r-1",
        "inbound_id": "i-1",
        "platform": "discord",
        "bot_id": "dgw",
        "chat": Chat(id="chan", type=ChatType.GROUP),
        "recipient": Sender(id="222"),
        "reply_handle": DiscordHandle(application_id="app1", channel_id="chan", message_id="900"),
        "seq": 0,
    }
    return ReplyChunk.model_validate(base | over)


def delivery(answers: list[httpx.Response], seen: list[httpx.Request]) -> DiscordDelivery:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0) if answers else httpx.Response(200, json={"id": "m-1", "content": "x"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return DiscordDelivery("dgw", "app1", "https://discord.test", client, 5.0, bot_token="bot-tok")


async def test_a_reply_is_created_once_then_edited() -> None:
    seen: list[httpx.Request] = []
    d = delivery([httpx.Response(200, json={"id": "m-1", "content": "Hel" + CURSOR})], seen)
    await d.update(chunk(), "Hel")
    await d.update(chunk(seq=1), "Hello")
    await d.send(chunk(final=True, full_text="Hello there"), "Hello there", 0)
    assert [(r.method, r.url.path) for r in seen] == [
        ("POST", "/api/v10/channels/chan/messages"),
        ("PATCH", "/api/v10/channels/chan/messages/m-1"),
        ("PATCH", "/api/v10/channels/chan/messages/m-1"),
    ]
    created = json.loads(seen[0].content)
    assert created["content"] == "Hel" + CURSOR
    assert created["message_reference"] == {
        "message_id": "900",
        "channel_id": "chan",
        "fail_if_not_exists": False,
    }
    assert created["nonce"] == nonce("r-1", 0) and len(created["nonce"]) <= 25 and created["enforce_nonce"]
    assert created["allowed_mentions"]["parse"] == []
    assert json.loads(seen[2].content)["content"] == "Hello there"
    assert all(r.headers["authorization"] == "Bot bot-tok" for r in seen)
    assert "bot-tok" not in repr(d)


async def test_a_final_without_updates_posts_and_fixes_a_nonce_echo() -> None:
    seen: list[httpx.Request] = []
    # Discord returns the message created earlier with the same nonce, showing older text: it is edited
    d = delivery([httpx.Response(200, json={"id": "m-9", "content": "old" + CURSOR})], seen)
    await d.send(chunk(final=True, full_text="All done"), "All done", 0)
    assert [(r.method, r.url.path) for r in seen] == [
        ("POST", "/api/v10/channels/chan/messages"),
        ("PATCH", "/api/v10/channels/chan/messages/m-9"),
    ]
    seen.clear()
    d2 = delivery([httpx.Response(200, json={"id": "m-2", "content": "part two"})], seen)
    await d2.send(chunk(final=True), "part two", 1)
    [post] = seen
    assert json.loads(post.content)["nonce"] == nonce("r-1", 1)


async def test_rate_limits() -> None:
    assert quiet_for(httpx.Headers({"x-ratelimit-remaining": "0", "x-ratelimit-reset-after": "1.5"})) == 1.5
    assert quiet_for(httpx.Headers({"x-ratelimit-remaining": "3", "x-ratelimit-reset-after": "1.5"})) == 0.0
    seen: list[httpx.Request] = []
    limited = httpx.Response(
        200,
        json={"id": "m-1", "content": "a"},
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset-after": "30"},
    )
    d = delivery([limited], seen)
    await d.update(chunk(), "a")
    await d.update(chunk(seq=1), "ab")  # the bucket is empty: skipped instead of drawing a 429
    assert len(seen) == 1
    seen.clear()
    d = delivery(
        [httpx.Response(429, json={"message": "You are being rate limited.", "retry_after": 0.7})], seen
    )
    with pytest.raises(RateLimitedError) as err:
        await d.send(chunk(final=True), "x", 0)
    assert err.value.retry_after == 0.7
