from __future__ import annotations

import httpx
import pytest

from imrelay.config import parse_settings
from imrelay.errors import (
    PermanentUpstreamError,
    RateLimitedError,
    TokenExpiredError,
    TransientUpstreamError,
)
from imrelay.platforms.wecom.delivery import check
from imrelay.platforms.wecom_app.delivery import send_body
from imrelay_sim.server import MessageLog, create_app

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
SETTINGS = parse_settings(
    {
        "bots": [
            {
                "id": "app",
                "platform": "wecom_app",
                "credentials": {
                    "corp_id": "ww1",
                    "agent_id": "1000002",
                    "secret": "sec",
                    "token": "t",
                    "encoding_aes_key": KEY,
                },
            }
        ]
    },
    {},
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sim(clock: Clock) -> httpx.AsyncClient:
    app = create_app(SETTINGS, clock=clock)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sim")


async def token(sim: httpx.AsyncClient) -> str:
    r = (await sim.get("/cgi-bin/gettoken", params={"corpid": "ww1", "corpsecret": "sec"})).json()
    assert r["errcode"] == 0
    return str(r["access_token"])


async def send(sim: httpx.AsyncClient, tok: str, user: str = "alice", text: str = "hi") -> int:
    r = await sim.post(
        "/cgi-bin/message/send", params={"access_token": tok}, json=send_body("1000002", user, text)
    )
    return int(r.json()["errcode"])


async def test_gettoken_errors_and_reuse(sim: httpx.AsyncClient) -> None:
    bad = await sim.get("/cgi-bin/gettoken", params={"corpid": "nope", "corpsecret": "sec"})
    assert bad.json()["errcode"] == 40013
    bad = await sim.get("/cgi-bin/gettoken", params={"corpid": "ww1", "corpsecret": "wrong"})
    assert bad.json()["errcode"] == 40001
    assert await token(sim) == await token(sim)


async def test_send_records_and_token_errors(sim: httpx.AsyncClient, clock: Clock) -> None:
    tok = await token(sim)
    assert await send(sim, "garbage") == 40014
    assert await send(sim, tok, text="你好") == 0
    msgs = (await sim.get("/sim/messages", params={"bot": "app"})).json()
    assert [(m["touser"], m["content"]) for m in msgs] == [("alice", "你好")]
    clock.t += 7201
    assert await send(sim, tok) == 42001
    assert await token(sim) != tok


async def test_per_member_limit_is_45009(sim: httpx.AsyncClient, clock: Clock) -> None:
    await sim.post("/sim/control", json={"user_limit": 3, "user_window": 60})
    tok = await token(sim)
    assert [await send(sim, tok, text=f"m{i}") for i in range(4)] == [0, 0, 0, 45009]
    assert await send(sim, tok, user="bob") == 0
    clock.t += 61
    assert await send(sim, tok, text="later") == 0


async def test_duplicate_check_drops_an_identical_resend(sim: httpx.AsyncClient, clock: Clock) -> None:
    tok = await token(sim)
    assert [await send(sim, tok, text="same") for _ in range(3)] == [0, 0, 0]
    assert len((await sim.get("/sim/messages")).json()) == 1
    assert (await sim.get("/sim/stats")).json()["duplicates_suppressed"] == 2
    clock.t += 1801
    assert await send(sim, tok, text="same") == 0
    assert len((await sim.get("/sim/messages")).json()) == 2


async def test_injected_faults(sim: httpx.AsyncClient) -> None:
    await sim.post("/sim/control", json={"fail_next": [-1, 502, 42001], "invalid_users": ["ghost"]})
    tok = await token(sim)
    assert await send(sim, tok) == -1
    r = await sim.post(
        "/cgi-bin/message/send", params={"access_token": tok}, json=send_body("1000002", "alice", "x")
    )
    assert r.status_code == 502
    assert await send(sim, tok) == 42001
    assert await send(sim, tok) == 42001  # that fault expired the token for real
    tok = await token(sim)
    assert await send(sim, tok, user="ghost") == 81013
    assert await send(sim, tok) == 0
    assert (await sim.get("/sim/messages")).json()[0]["touser"] == "alice"


async def test_random_fault_share(sim: httpx.AsyncClient) -> None:
    await sim.post("/sim/control", json={"fault_rate": 0.2, "fault_kinds": ["502", "-1"], "seed": 3})
    tok = await token(sim)
    codes = []
    for i in range(200):
        r = await sim.post(
            "/cgi-bin/message/send", params={"access_token": tok}, json=send_body("1000002", f"u{i}", "x")
        )
        codes.append(r.status_code if r.status_code != 200 else r.json()["errcode"])
    faults = sum(1 for c in codes if c != 0)
    assert 20 <= faults <= 60 and set(codes) <= {0, 502, -1}
    assert len((await sim.get("/sim/messages")).json()) == 200 - faults


@pytest.mark.parametrize(
    ("payload", "status", "exc"),
    [
        ({"errcode": 40014, "errmsg": "invalid"}, 200, TokenExpiredError),
        ({"errcode": 42001, "errmsg": "expired"}, 200, TokenExpiredError),
        ({"errcode": 45009, "errmsg": "freq"}, 200, RateLimitedError),
        ({"errcode": -1, "errmsg": "busy"}, 200, TransientUpstreamError),
        ({"errcode": 81013, "errmsg": "no user"}, 200, PermanentUpstreamError),
        ({"errcode": 60020, "errmsg": "ip"}, 200, PermanentUpstreamError),
        (None, 502, TransientUpstreamError),
        ({"x": 1}, 200, TransientUpstreamError),
        (None, 404, PermanentUpstreamError),
    ],
)
def test_errcode_classification(payload: object, status: int, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        check(payload, status)


def test_ok_passes() -> None:
    check({"errcode": 0, "errmsg": "ok"}, 200)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc", True),
        ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send", False),
        ("https://evil.example/cgi-bin/webhook/send?key=abc", False),
        ("http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc", False),
        ("https://qyapi.weixin.qq.com/cgi-bin/message/send?key=abc", False),
        ("https://qyapi.weixin.qq.com.evil.example/cgi-bin/webhook/send?key=abc", False),
        ("", False),
    ],
)
def test_robot_replies_only_to_the_platforms_webhook(url: str, ok: bool) -> None:
    from imrelay.platforms.wecom_group_robot.delivery import webhook_allowed

    assert webhook_allowed(url, "https://qyapi.weixin.qq.com") is ok


def test_robot_body_mentions_the_asker() -> None:
    from imrelay.platforms.wecom_group_robot.delivery import send_body as robot_body

    assert robot_body("hi", "zhangsan") == {
        "msgtype": "text",
        "text": {"content": "hi", "mentioned_list": ["zhangsan"]},
    }
    assert robot_body("hi", None) == {"msgtype": "text", "text": {"content": "hi"}}
    from imrelay.events import ReplyFormat

    assert robot_body("**hi**", "zhangsan", ReplyFormat.MARKDOWN) == {
        "msgtype": "markdown",
        "markdown": {"content": "<@zhangsan> **hi**"},
    }


async def test_token_lifetime_is_configurable(clock: Clock) -> None:
    app = create_app(SETTINGS, clock=clock, token_lifetime=5)
    sim = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sim")
    r = (await sim.get("/cgi-bin/gettoken", params={"corpid": "ww1", "corpsecret": "sec"})).json()
    assert r["expires_in"] == 5
    clock.t += 6
    assert await send(sim, r["access_token"]) == 42001


def test_message_log_finds_messages_by_their_keys_in_order() -> None:
    log = MessageLog()
    for i in range(1000):
        log.append({"seq": i, "platform": "discord", "token": f"t{i % 10}", "kind": "original"})
    log.append({"seq": 1000, "platform": "feishu", "card_id": "c1", "touser": ""})
    assert [m["seq"] for m in log.where(token="t3")] == list(range(3, 1000, 10))
    assert [m["seq"] for m in log.where(token="t3", platform="feishu")] == []
    assert [m["seq"] for m in log.where(card_id="c1", platform="feishu")] == [1000]
    assert log.where(touser="") == [m for m in log if m.get("touser", "") == ""]  # absent counts as empty
    assert len(log.where()) == len(log) == 1001 and log[-1]["seq"] == 1000
    log.where(token="t3")[0]["content"] = "edited"  # lookups give the stored messages themselves
    assert log[3]["content"] == "edited"
    log.clear()
    assert len(log) == 0 and log.where(token="t3") == []
