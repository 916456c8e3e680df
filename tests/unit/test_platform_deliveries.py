"""The pure parts of the Feishu, DingTalk, QQ and Discord deliveries: what each platform answer means,
and how answers are shaped."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import REGISTRY

from imrelay.config import parse_settings
from imrelay.delivery.tokens import TokenCache
from imrelay.errors import (
    ConfigError,
    PermanentUpstreamError,
    RateLimitedError,
    TokenExpiredError,
    TransientUpstreamError,
)
from imrelay.events import ReplyFormat
from imrelay.platforms.dingtalk import delivery as dingtalk
from imrelay.platforms.discord import delivery as discord
from imrelay.platforms.feishu import delivery as feishu
from imrelay.platforms.qq import delivery as qq
from imrelay.platforms.wecom_app.delivery import WeComAppDelivery
from tests.fakes import FakeKV

OK = None


@pytest.mark.parametrize(
    ("payload", "status", "wait", "exc"),
    [
        ({"code": 0, "msg": "success"}, 200, None, OK),
        ({"code": 99991663, "msg": "invalid token"}, 400, None, TokenExpiredError),
        ({"code": 99991400, "msg": "frequency limit"}, 429, 7.0, RateLimitedError),
        ({"code": 1500, "msg": "internal"}, 500, None, TransientUpstreamError),
        ({"code": 230002, "msg": "bot not in chat"}, 400, None, PermanentUpstreamError),
        (None, 502, None, TransientUpstreamError),
    ],
)
def test_feishu_answers(
    payload: object, status: int, wait: float | None, exc: type[Exception] | None
) -> None:
    if exc is None:
        feishu.check("feishu", payload, status, wait, 60.0)
        return
    with pytest.raises(exc) as err:
        feishu.check("feishu", payload, status, wait, 60.0)
    if exc is RateLimitedError:
        assert err.value.retry_after == 7.0  # type: ignore[attr-defined]


def test_feishu_reply_bodies() -> None:
    text = feishu.reply_body('你好 "x"', ReplyFormat.TEXT, "r-0")
    assert text["msg_type"] == "text" and json.loads(text["content"]) == {"text": '你好 "x"'}
    card = feishu.reply_body("**bold**", ReplyFormat.MARKDOWN, "r-1")
    assert card["msg_type"] == "interactive" and card["uuid"] == "r-1"
    assert json.loads(card["content"])["elements"][0] == {"tag": "markdown", "content": "**bold**"}


@pytest.mark.parametrize(
    ("payload", "status", "exc"),
    [
        ({"errcode": 0, "errmsg": "ok"}, 200, OK),
        ({"errcode": 130101, "errmsg": "send too fast"}, 200, RateLimitedError),
        ({"errcode": 310000, "errmsg": "keywords not in content"}, 200, PermanentUpstreamError),
        ({"processQueryKey": "q1"}, 200, OK),
        ({"code": "InvalidAuthentication", "message": "token"}, 401, TokenExpiredError),
        ({"code": "Throttling"}, 429, RateLimitedError),
        ({"code": "invalidParameter", "message": "bad"}, 400, PermanentUpstreamError),
        (None, 503, TransientUpstreamError),
    ],
)
def test_dingtalk_answers(payload: object, status: int, exc: type[Exception] | None) -> None:
    if exc is None:
        dingtalk.check(payload, status, None, 60.0)
    else:
        with pytest.raises(exc):
            dingtalk.check(payload, status, None, 60.0)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://oapi.dingtalk.com/robot/sendBySession?session=abc", True),
        ("http://127.0.0.1:8090/robot/sendBySession?session=abc", True),  # the configured api_base
        ("https://evil.example/robot/sendBySession?session=abc", False),
        ("https://oapi.dingtalk.com/gettoken", False),
    ],
)
def test_dingtalk_session_webhooks_only_to_dingtalk(url: str, ok: bool) -> None:
    assert dingtalk.session_allowed(url, "http://127.0.0.1:8090") is ok


def test_dingtalk_markdown_mentions_the_asker() -> None:
    assert dingtalk.markdown("Answer\nmore", "u1") == ("Answer", "@u1 Answer\nmore")
    assert dingtalk.markdown("x" * 40, None)[0] == "x" * 20


@pytest.mark.parametrize(
    ("payload", "status", "exc"),
    [
        ({"id": "m1"}, 200, OK),
        ({"code": 40054005, "message": "msg_seq already used"}, 400, OK),  # shown before: done
        ({"code": 11244, "message": "token expired"}, 401, TokenExpiredError),
        ({"code": 22009, "message": "msg limit exceed"}, 400, PermanentUpstreamError),
        ({"message": "slow down"}, 429, RateLimitedError),
        (None, 500, TransientUpstreamError),
    ],
)
def test_qq_answers(payload: object, status: int, exc: type[Exception] | None) -> None:
    if exc is None:
        qq.check(payload, status, None, 60.0)
    else:
        with pytest.raises(exc):
            qq.check(payload, status, None, 60.0)


def test_qq_cuts_to_five_replies_that_still_fit() -> None:
    parts = [("段" * 1333)] * 8
    capped = qq.cap(parts, 4000)
    assert len(capped) == 5 and capped[:4] == parts[:4]
    assert capped[-1].endswith(qq.CUT_NOTICE) and len(capped[-1].encode()) <= 4000
    assert qq.cap(parts[:3], 4000) == parts[:3]


@pytest.mark.parametrize(
    ("payload", "status", "exc"),
    [
        ({"id": "1"}, 200, OK),
        ({"message": "You are being rate limited.", "retry_after": 1.5}, 429, RateLimitedError),
        ({"message": "Unknown Webhook", "code": 10015}, 404, PermanentUpstreamError),
        (None, 502, TransientUpstreamError),
    ],
)
def test_discord_answers(payload: object, status: int, exc: type[Exception] | None) -> None:
    if exc is None:
        discord.check(payload, status, None)
        return
    with pytest.raises(exc) as err:
        discord.check(payload, status, None)
    if exc is RateLimitedError:
        assert err.value.retry_after == 1.5  # type: ignore[attr-defined]


def test_discord_public_key_must_be_hex() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(
            {
                "bots": [
                    {
                        "id": "d",
                        "platform": "discord",
                        "credentials": {"application_id": "1", "public_key": "not-hex", "bot_token": "t"},
                    }
                ]
            },
            {},
        )
    assert err.value.path == "bots.0.credentials.public_key"


def test_qq_tokens_come_from_bots_qq_com_unless_told_otherwise() -> None:
    s = parse_settings(
        {
            "bots": [
                {"id": "a", "platform": "qq", "credentials": {"app_id": "1", "app_secret": "s"}},
                {
                    "id": "b",
                    "platform": "qq",
                    "api_base": "http://sim",
                    "credentials": {"app_id": "2", "app_secret": "s"},
                },
            ]
        },
        {},
    )
    assert s.auth_base(s.bots[0]) == "https://bots.qq.com"
    assert s.api_base(s.bots[0]) == "https://api.sgroup.qq.com"
    assert s.auth_base(s.bots[1]) == "http://sim"


def test_reply_windows() -> None:
    from datetime import UTC, datetime, timedelta

    from imrelay.delivery.http import window_closed
    from imrelay.events import Chat, ChatType, ReplyChunk, Sender

    received = datetime(2026, 1, 1, tzinfo=UTC)
    chunk = ReplyChunk(
        reply_id="r",
        inbound_id="i",
        platform="qq",
        bot_id="b",
        chat=Chat(id="g", type=ChatType.GROUP),
        recipient=Sender(id="u"),
        seq=0,
        received_at=received,
    )
    assert not window_closed(chunk, 300, now=received + timedelta(seconds=299))
    assert window_closed(chunk, 300, now=received + timedelta(seconds=301))
    assert not window_closed(chunk.model_copy(update={"received_at": None}), 300)


def wecom_app(handler: Callable[[httpx.Request], httpx.Response]) -> WeComAppDelivery:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return WeComAppDelivery(
        bot_id="tok",
        corp_id="ww1",
        agent_id="1000002",
        secret="sec",
        api_base="https://qyapi.weixin.qq.com",
        client=client,
        tokens=TokenCache(FakeKV()),
        timeout=2.5,
    )


def calls_timed() -> float:
    return (
        REGISTRY.get_sample_value("imrelay_delivery_seconds_count", {"platform": "wecom_app", "bot": "tok"})
        or 0
    )


async def test_wecom_gettoken_is_a_timed_call_with_the_delivery_timeout() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"errcode": 0, "access_token": "AT", "expires_in": 7200})

    delivery = wecom_app(answer)
    before = calls_timed()
    try:
        assert await delivery._fetch_token() == ("AT", 7200.0)
    finally:
        await delivery.client.aclose()
    assert calls_timed() == before + 1
    assert seen[0].url.path == "/cgi-bin/gettoken" and seen[0].url.params["corpid"] == "ww1"
    assert seen[0].extensions["timeout"]["read"] == 2.5


async def test_wecom_gettoken_that_cannot_connect_is_a_transient_token_failure() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    delivery = wecom_app(unreachable)
    try:
        with pytest.raises(TransientUpstreamError) as err:
            await delivery._fetch_token()
    finally:
        await delivery.client.aclose()
    assert err.value.code == "token"  # what `imrelay check-config` reports as an unreachable endpoint
