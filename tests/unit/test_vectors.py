"""Every wecom_app and wecom_group_robot case of the shared vectors, through the real ingress app (with a
fake publisher), accepted or rejected exactly as the vector says; plus the crypto-level error codes."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from imrelay.config import parse_settings
from imrelay.errors import CallbackError
from imrelay.platforms.wecom.crypto import WeComCrypto
from imrelay.platforms.wecom_aibot.handle import WeComAIBotHandle
from imrelay.platforms.wecom_group_robot.handle import WeComGroupRobotHandle
from imrelay_ingress.app import create_app

from ..helpers import FakePublisher, FakeStreamStore, load_vectors

CASES = load_vectors("wecom_app", "wecom_group_robot", "wecom_aibot")
HTTP_CASES = [c for c in CASES if c["kind"] in ("url_verification", "encrypted_callback")]
REPLY_CASES = [c for c in CASES if c["kind"] == "passive_reply_encryption"]
BOT_ID = "vector-bot"


def test_the_vectors_are_all_here() -> None:
    assert len(CASES) == 43
    assert len(HTTP_CASES) + len(REPLY_CASES) == len(CASES)


def _bot(case: dict[str, Any]) -> dict[str, Any]:
    cred = case["credentials"]
    if case["platform"] == "wecom_app":
        return {
            "id": BOT_ID,
            "platform": "wecom_app",
            "credentials": {
                "corp_id": cred["corp_id"],
                "agent_id": cred["agent_id"],
                "secret": "unused",
                "token": cred["token"],
                "encoding_aes_key": cred["encoding_aes_key"],
            },
        }
    return {
        "id": BOT_ID,
        "platform": case["platform"],
        "credentials": {"token": cred["token"], "encoding_aes_key": cred["encoding_aes_key"]},
    }


async def _send(case: dict[str, Any]) -> tuple[int, str, FakePublisher]:
    settings = parse_settings({"bots": [_bot(case)]}, {})
    publisher = FakePublisher()
    app = create_app(settings, publisher, clock=lambda: float(case["now"]), streams=FakeStreamStore())
    req = case["request"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://ingress") as client:
        resp = await client.request(
            req["method"],
            f"/callback/{BOT_ID}?{req['raw_query']}",
            content=req["body"].encode("utf-8"),
            headers=req["headers"],
        )
    return resp.status_code, resp.text, publisher


def _select(kind: str, *, accepted: bool, aibot: bool | None = None) -> list[Any]:
    return [
        pytest.param(c, id=c["id"])
        for c in HTTP_CASES
        if c["kind"] == kind
        and (c["expected"]["verdict"] == "accept") is accepted
        and (aibot is None or (c["platform"] == "wecom_aibot") is aibot)
    ]


REJECTED = _select("url_verification", accepted=False) + _select("encrypted_callback", accepted=False)


def test_every_http_vector_has_its_test() -> None:
    tested = (
        _select("url_verification", accepted=True)
        + REJECTED
        + _select("encrypted_callback", accepted=True, aibot=False)
        + _select("encrypted_callback", accepted=True, aibot=True)
    )
    assert sorted(p.id for p in tested) == sorted(c["id"] for c in HTTP_CASES)


@pytest.mark.parametrize("case", _select("url_verification", accepted=True))
async def test_url_verification_vector(case: dict[str, Any]) -> None:
    status, body, publisher = await _send(case)
    expected = case["expected"]
    assert status == expected["status"]
    assert body == expected["response_body"]
    assert publisher.published == []


@pytest.mark.parametrize("case", REJECTED)
async def test_rejected_vector(case: dict[str, Any]) -> None:
    status, body, publisher = await _send(case)
    assert 400 <= status < 500, f"rejected with {status}"
    assert body == ""
    assert publisher.published == []


@pytest.mark.parametrize("case", _select("encrypted_callback", accepted=True, aibot=False))
async def test_callback_vector(case: dict[str, Any]) -> None:
    status, body, publisher = await _send(case)
    expected = case["expected"]
    assert status == expected["status"]
    if "response_body" in expected:
        assert body == expected["response_body"]
    assert len(publisher.published) == 1
    msg = publisher.published[0]
    assert msg.platform_message_id == expected["dedupe_key"]
    fields = expected["fields"]
    if fields.get("MsgType") == "text" and "Content" in fields:
        assert msg.text == fields["Content"]
        assert msg.sender.id == fields["FromUserName"]
    if "Text.Content" in fields:
        # the group message starts with "@RobotA": stripped before the LLM sees it
        assert msg.text == re.sub(r"^@\S+\s*", "", fields["Text.Content"])
        assert msg.mentioned
        assert msg.chat.id == fields["ChatId"]
        assert msg.sender.id == fields["From.UserId"]
        assert msg.sender.name == "张三" and msg.sender.alias == "jackzhang"
        assert WeComGroupRobotHandle.of(msg).webhook_url.startswith("https://")
    if fields.get("MsgType") == "event":
        assert msg.kind == "event" and msg.event == fields["Event"]


@pytest.mark.parametrize("case", _select("encrypted_callback", accepted=True, aibot=True))
async def test_aibot_callback_vector(case: dict[str, Any]) -> None:
    """A text message is stored and answered with the start of its stream; a refresh poll for a stream
    nobody opened is answered "finished" (never an error loop) and stores nothing."""
    status, body, publisher = await _send(case)
    expected = case["expected"]
    assert status == expected["status"]
    reply = _aibot_reply(case, body)
    if expected["fields"]["msgtype"] == "stream":
        assert publisher.published == [] and reply["stream"]["finish"] is True
        assert reply["stream"]["id"] == expected["fields"]["stream.id"]
    else:
        [msg] = publisher.published
        assert msg.platform_message_id == expected["dedupe_key"]
        assert msg.text == "总结一下" and msg.chat.type.value == "group"
        assert reply == {
            "msgtype": "stream",
            "stream": {"id": WeComAIBotHandle.of(msg).stream_id, "finish": False, "content": ""},
        }


@pytest.mark.parametrize(
    "case", [c for c in HTTP_CASES if c["polarity"] == "negative"], ids=lambda c: c["id"]
)
def test_crypto_error_codes(case: dict[str, Any]) -> None:
    cred = case["credentials"]
    crypto = WeComCrypto(cred["token"], cred["encoding_aes_key"], cred["receive_id"])
    q = case["request"]["query"]
    if case["kind"] == "url_verification":
        data = q["echostr"]
    elif case["platform"] == "wecom_aibot":
        import json

        data = json.loads(case["request"]["body"])["encrypt"]
    else:
        m = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]></Encrypt>", case["request"]["body"], re.S)
        assert m is not None
        data = m.group(1)
    with pytest.raises(CallbackError) as err:
        crypto.verify_and_decrypt(q["msg_signature"], q["timestamp"], q["nonce"], data)
    acceptable = case["expected"].get("acceptable_error_codes") or [case["expected"]["error_code"]]
    assert err.value.code in acceptable


def _aibot_reply(case: dict[str, Any], body: str) -> dict[str, Any]:
    import json

    cred = case["credentials"]
    env = json.loads(body)
    crypto = WeComCrypto(cred["token"], cred["encoding_aes_key"], "")
    assert crypto.sign(env["timestamp"], env["nonce"], env["encrypt"]) == env["msgsignature"]
    reply: dict[str, Any] = json.loads(crypto.decrypt(env["encrypt"]))
    return reply


@pytest.mark.parametrize("case", REPLY_CASES, ids=[c["id"] for c in REPLY_CASES])
def test_passive_reply_encryption(case: dict[str, Any]) -> None:
    from imrelay.platforms.wecom_aibot.ingress import envelope

    cred, req, expected = case["credentials"], case["request"], case["expected"]
    crypto = WeComCrypto(cred["token"], cred["encoding_aes_key"], cred["receive_id"])
    rnd = req["random16_ascii"].encode("ascii")
    assert crypto.encrypt(req["reply_plaintext"].encode("utf-8"), rnd) == expected["encrypt"]
    assert crypto.sign(req["timestamp"], req["nonce"], expected["encrypt"]) == expected["msgsignature"]
    if case["platform"] == "wecom_aibot":  # JSON envelope
        assert (
            envelope(crypto, req["reply_plaintext"], req["timestamp"], req["nonce"], rnd).decode()
            == expected["response_body"]
        )
    else:
        assert (
            crypto.encrypted_xml_reply(req["reply_plaintext"], req["timestamp"], req["nonce"], rnd)
            == expected["response_body"]
        )
