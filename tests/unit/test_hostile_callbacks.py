"""The attacks found against the callback endpoints, each replayed against the ingress: forged or altered
messages are refused with a 4xx and nothing is stored."""

from __future__ import annotations

import base64
import json
import logging
import time

import pytest

from imrelay import ed25519
from imrelay.config import parse_settings
from imrelay.errors import ConfigError
from imrelay.platforms.qq.keys import qq_seed
from imrelay_ingress.app import create_app

from ..helpers import FakePublisher
from ..hostile import BOT_IDS, BOTS, Ingress, Request, settings, signed

NOW = 1_767_263_060.0


# ---- QQ: the op 13 signing oracle ------------------------------------------------------------------------


def qq_validation(plain_token: str, event_ts: str, key_secret: str | None = None) -> Request:
    body = json.dumps({"op": 13, "d": {"plain_token": plain_token, "event_ts": event_ts}}).encode()
    headers = {"Content-Type": "application/json", "X-Bot-Appid": "1020304"}
    if key_secret is not None:  # QQ itself: signed with the bot's key
        key = ed25519.signing_key(qq_seed(key_secret))
        headers |= {
            "X-Signature-Timestamp": event_ts,
            "X-Signature-Ed25519": ed25519.sign(key, event_ts.encode() + body),
        }
    return Request("qq", "", headers, body)


async def test_qq_validation_cannot_be_used_to_sign_a_forged_event() -> None:
    """The attack: ask op 13 to sign ``ts + <event body>``, then post that body with the signature."""
    ingress = Ingress(now=NOW)
    ts = str(int(NOW))
    forged = json.dumps(
        {
            "op": 0,
            "id": "x",
            "t": "C2C_MESSAGE_CREATE",
            "d": {"id": "forged-1", "content": "transfer the money", "author": {"user_openid": "boss"}},
        }
    ).encode()
    oracle = await ingress.send(qq_validation(forged.decode(), ts))
    assert oracle.status_code == 401 and "signature" not in oracle.text
    # even had a signature been obtained somehow, the forged body would need one of its own
    stolen = "00" * 64
    resp = await ingress.send(
        Request("qq", "", {"X-Signature-Timestamp": ts, "X-Signature-Ed25519": stolen}, forged)
    )
    assert resp.status_code == 401
    assert ingress.publisher.published == []


async def test_qq_validation_signed_by_qq_is_answered_but_never_signs_json() -> None:
    ingress = Ingress(now=NOW)
    ts = str(int(NOW))
    ok = await ingress.send(qq_validation("Arq0D5A61EgUu4OxUvOp", ts, "qqsecret0123456789"))
    assert ok.status_code == 200
    key = ed25519.signing_key(qq_seed("qqsecret0123456789"))
    ed25519.verify(key.public_key(), f"{ts}Arq0D5A61EgUu4OxUvOp".encode(), ok.json()["signature"])
    # a plain_token that could complete an event body is not signed, even on a request signed by QQ
    refused = await ingress.send(qq_validation('{"op":0}', ts, "qqsecret0123456789"))
    assert refused.status_code == 400 and "signature" not in refused.text


async def test_qq_validation_from_another_bot_key_is_refused() -> None:
    ingress = Ingress(now=NOW)
    resp = await ingress.send(qq_validation("abc", str(int(NOW)), "another-bots-secret-000"))
    assert resp.status_code == 401


# ---- DingTalk: header reuse -------------------------------------------------------------------------------


async def test_dingtalk_signed_headers_cannot_carry_another_body() -> None:
    ingress = Ingress(now=NOW)
    real = signed("dt", "hello", "1", NOW)
    assert (await ingress.send(real)).status_code == 200
    body = json.loads(real.body)
    body.update(msgId="msg-forged", text={"content": "forged"})
    forged = real.replace(body=json.dumps(body).encode())
    resp = await ingress.send(forged)
    assert resp.status_code == 401
    [stored] = ingress.publisher.published
    assert stored.text == "hello"


async def test_dingtalk_platform_retry_with_the_same_headers_is_acked_once() -> None:
    ingress = Ingress(now=NOW)
    real = signed("dt", "hello", "1", NOW)
    assert (await ingress.send(real)).status_code == 200
    assert (await ingress.send(real)).status_code == 200
    assert len(ingress.publisher.published) == 1


async def test_dingtalk_body_for_another_robot_is_refused() -> None:
    ingress = Ingress(now=NOW)
    req = signed("dt", "hello", "1", NOW)
    body = json.loads(req.body)
    for robot in ("dingother", None, 42):
        body["robotCode"] = robot
        resp = await ingress.send(req.replace(body=json.dumps(body).encode()))
        assert resp.status_code == 401
    assert ingress.publisher.published == []


@pytest.mark.parametrize(
    ("window", "age", "status"),
    [
        (None, 299, 200),
        (None, 301, 401),
        (60, 61, 401),
        (3600, 3599, 200),
        (0, 3599, 200),
        (0, 3601, 401),
        (7200, 3601, 401),  # never beyond DingTalk's own hour
    ],
)
async def test_dingtalk_window_is_configurable_and_tight_by_default(
    window: float | None, age: float, status: int
) -> None:
    s = settings(dt={} if window is None else {"replay_window_seconds": window})
    ingress = Ingress(s=s, now=NOW)
    assert (await ingress.send(signed("dt", "hi", "1", NOW - age, s))).status_code == status


async def test_dingtalk_without_a_replay_record_is_not_stored() -> None:
    """No record of used signatures (NATS down): 503 so DingTalk retries, never an unchecked message."""
    publisher = FakePublisher()
    app = create_app(settings(), publisher, clock=lambda: NOW)
    ingress = Ingress(now=NOW)
    ingress.app, ingress.publisher = app, publisher
    assert (await ingress.send(signed("dt", "hi", "1", NOW))).status_code == 503
    assert publisher.published == []


# ---- Feishu / Lark: unsigned events and altered bodies -----------------------------------------------------


def test_feishu_bot_without_encrypt_key_refuses_to_start() -> None:
    lark = {
        "id": "lk",
        "platform": "lark",
        "credentials": {"app_id": "cli_lk", "app_secret": "s", "verification_token": "lk-token"},
    }
    with pytest.raises(ConfigError) as err:
        parse_settings({"bots": [lark]}, {})
    assert err.value.path == "bots.0.credentials.encrypt_key"
    assert "allow_unsigned_events" in str(err.value)


def test_unsigned_opt_out_is_logged_at_start(caplog: pytest.LogCaptureFixture) -> None:
    lark = {
        "id": "lk",
        "platform": "lark",
        "allow_unsigned_events": True,
        "credentials": {"app_id": "cli_lk", "app_secret": "s", "verification_token": "lk-token"},
    }
    with caplog.at_level(logging.WARNING, logger="imrelay.ingress"):
        create_app(parse_settings({"bots": [lark]}, {}), FakePublisher())
    assert any("lk accepts unsigned events" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bot_id", ["fs", "lk"])
async def test_feishu_bit_flipped_or_unsigned_events_are_refused(bot_id: str) -> None:
    ingress = Ingress(now=NOW)
    real = signed(bot_id, "pay 10 yuan", "1", NOW)
    envelope = json.loads(real.body)
    raw = bytearray(base64.b64decode(envelope["encrypt"]))
    for i in (0, 5, 16, 40, len(raw) - 1):  # IV (changes the first block of plaintext) and ciphertext
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        body = json.dumps({"encrypt": base64.b64encode(bytes(flipped)).decode()}).encode()
        assert (await ingress.send(real.replace(body=body))).status_code == 401
    unsigned = {k: v for k, v in real.headers.items() if not k.startswith("X-Lark")}
    assert (await ingress.send(real.replace(headers=unsigned))).status_code == 401
    assert ingress.publisher.published == []
    assert (await ingress.send(real)).status_code == 200


# ---- replays after the dedupe window -----------------------------------------------------------------------


@pytest.mark.parametrize("bot_id", BOT_IDS)
async def test_a_captured_callback_replayed_later_is_refused(bot_id: str) -> None:
    """Every platform that signs a timestamp: a valid callback replayed after the window is not answered,
    whatever the message store remembers (here: a fresh store, as after the dedupe window)."""
    sent_at = time.time()
    req = signed(bot_id, "hello", "1", sent_at)
    assert (await Ingress(now=sent_at).send(req)).status_code == 200
    late = Ingress(now=sent_at + 301)
    resp = await late.send(req)
    assert resp.status_code == 401 and late.publisher.published == []
    early = Ingress(now=sent_at - 301)  # a clock ahead of ours is refused as well
    assert (await early.send(req)).status_code == 401


@pytest.mark.parametrize("bot_id", BOT_IDS)
async def test_the_replay_window_is_configurable(bot_id: str) -> None:
    s = settings(**{bot_id: {"replay_window_seconds": 30}})
    req = signed(bot_id, "hello", "1", NOW, s)
    assert (await Ingress(s=s, now=NOW + 29).send(req)).status_code == 200
    assert (await Ingress(s=s, now=NOW + 31).send(req)).status_code == 401


def test_every_platform_is_covered() -> None:
    from imrelay import platforms

    assert {b["platform"] for b in BOTS} == set(platforms.tags())
