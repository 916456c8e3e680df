"""Every Feishu, DingTalk, QQ and Discord case of the shared vectors through the real ingress app (fake
publisher): positives accepted with the expected response and normalized message, negatives refused with a
4xx and nothing published; the known-answer cases against the crypto functions.

Two settings follow the vectors rather than imrelay's defaults: the DingTalk bot accepts DingTalk's own
one-hour window (the vectors probe its edge; imrelay's default window is tighter), and the QQ op 13
requests, which the vectors give without the signature headers QQ sends on every callback, are signed here
as QQ signs them (imrelay refuses an unsigned op 13: see ``test_qq_unsigned_validation_is_refused``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from imrelay import ed25519
from imrelay.config import parse_settings
from imrelay.platforms.dingtalk import crypto as dingtalk_crypto
from imrelay.platforms.feishu import crypto as feishu_crypto
from imrelay.platforms.qq.keys import qq_seed
from imrelay_ingress.app import create_app

from ..helpers import FakePublisher, FakeReplayGuard, load_vectors

CASES = load_vectors("feishu", "dingtalk", "qq", "discord")
HTTP = [c for c in CASES if "method" in c["request"]]
KNOWN = [c for c in CASES if "method" not in c["request"]]
BOT = "vector-bot"


def test_the_vectors_are_all_here() -> None:
    assert len(CASES) == 40 and len(HTTP) == 37


def bot_config(case: dict[str, Any]) -> dict[str, Any]:
    cred, platform = case["credentials"], case["platform"]
    extra: dict[str, Any] = {}
    if platform == "feishu":
        creds = {
            "app_id": cred["app_id"],
            "app_secret": "unused",
            "encrypt_key": cred["encrypt_key"],
            "verification_token": cred["verification_token"],
        }
        extra["allow_unsigned_events"] = not cred["encrypt_key"]
    elif platform == "dingtalk":
        creds = {"app_key": cred["app_key"], "app_secret": cred["app_secret"]}
        extra["replay_window_seconds"] = 3600
    elif platform == "qq":
        creds = {"app_id": cred["app_id"], "app_secret": cred["bot_secret"]}
    else:
        creds = {
            "application_id": cred["application_id"],
            "public_key": cred["public_key_hex"],
            "bot_token": "unused",
        }
    return {"id": BOT, "platform": platform, "credentials": creds, **extra}


def qq_signed(case: dict[str, Any], headers: dict[str, str], body: bytes) -> dict[str, str]:
    """The headers QQ sends with an op 13 request: the signature of ``event_ts + body``."""
    ts = json.loads(body)["d"]["event_ts"]
    key = ed25519.signing_key(qq_seed(case["credentials"]["bot_secret"]))
    return {
        **headers,
        "X-Signature-Method": "Ed25519",
        "X-Signature-Timestamp": ts,
        "X-Signature-Ed25519": ed25519.sign(key, ts.encode() + body),
    }


async def send(case: dict[str, Any], *, as_given: bool = False) -> tuple[httpx.Response, FakePublisher]:
    now = case["now"] if case.get("now") is not None else case["now_ms"] / 1000
    publisher = FakePublisher()
    app = create_app(
        parse_settings({"bots": [bot_config(case)]}, {}),
        publisher,
        clock=lambda: now,
        replay=FakeReplayGuard(),
    )
    req = case["request"]
    body, headers = req["body"].encode(), dict(req["headers"])
    if case["platform"] == "qq" and case["kind"] == "url_verification" and not as_given:
        headers = qq_signed(case, headers, body)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://i") as client:
        resp = await client.request(req["method"], f"/callback/{BOT}", content=body, headers=headers)
    return resp, publisher


@pytest.mark.parametrize("case", HTTP, ids=[c["id"] for c in HTTP])
async def test_callback_vector(case: dict[str, Any]) -> None:
    resp, publisher = await send(case)
    expected = case["expected"]
    if expected["verdict"] == "reject":
        assert 400 <= resp.status_code < 500, resp.status_code
        if "status" in expected:
            assert resp.status_code == expected["status"]
        assert publisher.published == []
        return
    assert resp.status_code == expected["status"]
    if "response_json" in expected:
        assert resp.json() == expected["response_json"]
    if "dedupe_key" in expected:
        [msg] = publisher.published
        assert msg.platform_message_id == expected["dedupe_key"]
        if "text" in expected:
            want = expected["text"]
            if case["platform"] == "feishu":
                want = want.replace("@_user_1 ", "")  # the bot's own mention is stripped
            assert msg.text == want
    elif case["id"].endswith("near-window-edge"):
        assert len(publisher.published) == 1
    else:
        assert case["kind"] == "url_verification" and publisher.published == []


QQ_VALIDATION = [c for c in HTTP if c["platform"] == "qq" and c["kind"] == "url_verification"]


@pytest.mark.parametrize("case", QQ_VALIDATION, ids=[c["id"] for c in QQ_VALIDATION])
async def test_qq_unsigned_validation_is_refused(case: dict[str, Any]) -> None:
    """An op 13 request without QQ's signature is refused: the answer is a signature with the bot's key."""
    resp, publisher = await send(case, as_given=True)
    assert resp.status_code == 401 and "signature" not in resp.text and publisher.published == []


def test_feishu_official_decrypt_known_answer() -> None:
    case = next(c for c in KNOWN if c["id"].endswith("feishu-official-decrypt-kat"))
    req = case["request"]
    encrypted = req.get("encrypt") or req.get("ciphertext")
    assert (
        feishu_crypto.decrypt(case["credentials"]["encrypt_key"], encrypted).decode()
        == case["expected"]["plaintext"]
    )


def test_qq_seed_and_public_key_known_answer() -> None:
    case = next(c for c in KNOWN if c["id"].endswith("qq-official-seed-pubkey-kat"))
    seed = qq_seed(case["credentials"]["bot_secret"])
    assert seed.decode() == case["expected"]["seed_ascii"]
    assert ed25519.public_key_hex(ed25519.signing_key(seed)) == case["expected"]["public_key_hex"]


def test_dingtalk_custom_robot_signing_known_answer() -> None:
    case = next(c for c in KNOWN if c["id"].endswith("custom-robot-send-sign"))
    ts = str(case["now_ms"] if "timestamp" not in case["request"] else case["request"]["timestamp"])
    secret = case["credentials"]["robot_secret"]
    assert dingtalk_crypto.sign(ts, secret) == case["expected"]["sign"]
    assert dingtalk_crypto.signed_query(ts, secret) == case["expected"]["query_suffix"]


def test_known_answer_cases_are_all_covered() -> None:
    assert sorted(c["id"].split("-", 2)[2] for c in KNOWN) == sorted(
        ["feishu-official-decrypt-kat", "qq-official-seed-pubkey-kat", "dingtalk-custom-robot-send-sign"]
    )
