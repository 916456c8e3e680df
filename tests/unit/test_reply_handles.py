"""Typed reply handles: each platform's model in the events (schema version 2), version 1 events (their
handle a plain mapping, as ``tests/fixtures/events/v1_events.json`` holds what the ingresses wrote) read and
delivered as before, foreign or wrong-typed handles refused, and the credentials the models mark masked."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from imrelay import platforms
from imrelay.errors import PermanentUpstreamError
from imrelay.events import (
    SCHEMA_VERSION,
    Chat,
    ChatType,
    ConnectionAnswer,
    ConnectionRequest,
    InboundMessage,
    ReplyChunk,
    Sender,
)
from imrelay.platforms.dingtalk.handle import DingTalkHandle
from imrelay.platforms.discord.delivery import DiscordDelivery
from imrelay.platforms.discord.handle import DiscordHandle
from imrelay.platforms.feishu.handle import FeishuHandle
from imrelay.platforms.handle import Credential, ReplyHandleBase
from imrelay.platforms.qq.handle import QQHandle
from imrelay.platforms.wecom_aibot.delivery import WeComAIBotDelivery
from imrelay.platforms.wecom_aibot.handle import WeComAIBotHandle
from imrelay.platforms.wecom_app.delivery import WeComAppDelivery
from imrelay.platforms.wecom_app.handle import WeComAppHandle
from imrelay.platforms.wecom_group_robot.delivery import WeComGroupRobotDelivery
from imrelay.platforms.wecom_group_robot.handle import WeComGroupRobotHandle
from imrelay.redact import MASK, MASKER
from imrelay.subjects import kv_key

from ..helpers import FakeStreamStore

V1 = json.loads((Path(__file__).parents[1] / "fixtures" / "events" / "v1_events.json").read_text())
ROBOT_WEBHOOK = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx-robotkey"


def v1_chunk(name: str, **update: Any) -> ReplyChunk:
    raw = V1[name]["chunk"]
    assert raw["schema_version"] == 1
    return ReplyChunk.model_validate_json(json.dumps(raw)).model_copy(update=update)


# what the version 1 handle of each recorded event reads as
EXPECTED: dict[str, ReplyHandleBase] = {
    "wecom_app": WeComAppHandle(touser="zhangsan", agentid="1000002"),
    "wecom_group_robot": WeComGroupRobotHandle(chat_id="wrkSFfCgAAA", webhook_url=ROBOT_WEBHOOK),
    "wecom_aibot": WeComAIBotHandle(
        stream_id="sid-1",
        mode="callback",
        response_url="https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=RespCode123",
    ),
    "wecom_aibot_ws": WeComAIBotHandle(
        stream_id="sid-1",
        mode="long_connection",
        req_id="req-9",
        chatid="wangwu",
        response_url="https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=RespCode123",
    ),
    "lark": FeishuHandle(kind="lark", message_id="om_1", chat_id="oc_1", open_id="ou_1"),
    "dingtalk": DingTalkHandle(
        conversation_id="cid1",
        robot_code="ding1",
        sender_staff_id="staff1",
        session_webhook="https://oapi.dingtalk.com/robot/sendBySession?session=SeSsIoN42",
        session_webhook_expires_ms=1767229200000,
    ),
    # version 1 named the chat kind ``kind``: it is ``target_kind`` now
    "qq": QQHandle(target_kind="group", target="G1", msg_id="q1"),
    "discord": DiscordHandle(application_id="123", interaction_token="aW50ZXJhY3Rpb24tokenvalue"),
}


def test_every_platform_declares_a_handle_of_its_tags() -> None:
    for spec in platforms.SPECS:
        kind = spec.reply_handle.model_fields["kind"].annotation
        assert set(getattr(kind, "__args__", ())) == set(spec.tags), spec.title


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_v1_event_reads_as_its_platforms_handle_and_is_written_as_current(name: str) -> None:
    inbound = InboundMessage.model_validate(V1[name]["inbound"])
    chunk = ReplyChunk.model_validate_json(json.dumps(V1[name]["chunk"]))
    for event in (inbound, chunk):
        assert event.reply_handle == EXPECTED[name]
        assert event.schema_version == SCHEMA_VERSION == 3
    written = json.loads(chunk.model_dump_json())
    assert written["schema_version"] == 3 and written["reply_handle"]["kind"] == chunk.platform
    again = ReplyChunk.model_validate_json(chunk.model_dump_json())
    assert again == chunk
    # the rest of the event is read as it was written
    assert {k: v for k, v in written.items() if k not in ("schema_version", "reply_handle", "media")} == {
        k: v for k, v in V1[name]["chunk"].items() if k not in ("schema_version", "reply_handle")
    }


def test_a_v2_event_round_trips() -> None:
    chunk = ReplyChunk(
        reply_id="r",
        inbound_id="i",
        platform="qq",
        bot_id="b",
        chat=Chat(id="C1", type=ChatType.GROUP),
        recipient=Sender(id="u"),
        seq=3,
        reply_handle=QQHandle(target_kind="channel", target="C1", msg_id="m9", guild_id="g"),
    )
    raw = json.loads(chunk.model_dump_json())
    assert raw["reply_handle"] == {
        "kind": "qq",
        "target_kind": "channel",
        "target": "C1",
        "msg_id": "m9",
        "guild_id": "g",
    }
    assert ReplyChunk.model_validate(raw) == chunk
    assert ReplyChunk.model_validate_json(chunk.model_dump_json()).reply_handle == chunk.reply_handle


def test_an_event_without_a_handle_has_none() -> None:
    msg = InboundMessage(
        id="m",
        platform="feishu",
        bot_id="b",
        platform_message_id="k",
        chat=Chat(id="c", type=ChatType.DIRECT),
        sender=Sender(id="u"),
    )
    assert msg.reply_handle is None
    assert InboundMessage.model_validate_json(msg.model_dump_json()).reply_handle is None
    v1 = {**V1["lark"]["inbound"], "reply_handle": {}}
    assert InboundMessage.model_validate(v1).reply_handle is None


BASE: dict[str, Any] = {
    "schema_version": 2,
    "reply_id": "r",
    "inbound_id": "i",
    "bot_id": "b",
    "chat": {"id": "c", "type": "direct"},
    "recipient": {"id": "u"},
    "seq": 0,
}


@pytest.mark.parametrize(
    ("platform", "handle"),
    [
        # another platform's handle
        ("wecom_app", {"kind": "discord", "application_id": "1", "interaction_token": "tok"}),
        ("feishu", {"kind": "lark", "message_id": "om", "chat_id": "oc", "open_id": "ou"}),
        # an unknown kind
        ("qq", {"kind": "group", "target": "G", "msg_id": "m"}),
        # a field of the wrong type, or missing
        ("qq", {"kind": "qq", "target_kind": "everyone", "target": "G", "msg_id": "m"}),
        ("dingtalk", {"kind": "dingtalk", "conversation_id": "c", "session_webhook_expires_ms": "soon"}),
        ("wecom_app", {"kind": "wecom_app", "touser": 42, "agentid": "1"}),
        ("discord", {"kind": "discord", "application_id": "1"}),
        ("wecom_aibot", {"kind": "wecom_aibot", "stream_id": "s", "mode": "carrier-pigeon"}),
        # version 1 handles that do not fit their platform's model
        ("discord", {"application_id": "1"}),
        ("wecom_app", {"touser": ["a", "b"], "agentid": "1"}),
    ],
)
def test_a_wrong_handle_is_refused(platform: str, handle: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ReplyChunk.model_validate({**BASE, "platform": platform, "reply_handle": handle})
    with pytest.raises(ValidationError):
        ReplyChunk.model_validate_json(json.dumps({**BASE, "platform": platform, "reply_handle": handle}))


async def test_a_delivery_refuses_a_handle_of_another_platform() -> None:
    chunk = v1_chunk("discord")
    delivery = WeComGroupRobotDelivery(
        bot_id="robot", api_base="https://qyapi.weixin.qq.com", client=httpx.AsyncClient(), timeout=1.0
    )
    with pytest.raises(PermanentUpstreamError) as err:
        await delivery.send(chunk, "hi", 0)
    assert err.value.code == "bad_handle" and "aW50ZXJhY3Rpb24tokenvalue" not in str(err.value)
    with pytest.raises(PermanentUpstreamError):
        WeComAppHandle.of(chunk.model_copy(update={"reply_handle": None}))


# ---- version 1 events are delivered as before ----------------------------------------------------------


def recorder(sent: list[httpx.Request], answer: dict[str, Any]) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=answer)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_v1_group_robot_answer_goes_to_its_webhook() -> None:
    sent: list[httpx.Request] = []
    delivery = WeComGroupRobotDelivery(
        bot_id="robot",
        api_base="https://qyapi.weixin.qq.com",
        client=recorder(sent, {"errcode": 0}),
        timeout=1.0,
    )
    chunk = v1_chunk("wecom_group_robot")
    await delivery.send(chunk, "hello", 0)
    [request] = sent
    assert str(request.url) == ROBOT_WEBHOOK
    assert json.loads(request.content)["text"] == {"content": "hello", "mentioned_list": ["lisi"]}
    assert delivery.limits(chunk) == delivery.limits(
        chunk.model_copy(update={"reply_handle": EXPECTED["wecom_group_robot"]})
    )


async def test_v1_discord_answer_edits_the_interaction() -> None:
    sent: list[httpx.Request] = []
    delivery = DiscordDelivery(
        bot_id="disc",
        application_id="999",
        api_base="https://discord.com",
        client=recorder(sent, {"id": "1"}),
        timeout=1.0,
    )
    await delivery.update(v1_chunk("discord", received_at=datetime.now(UTC)), "partial")
    [request] = sent
    assert request.method == "PATCH"
    assert request.url.path == "/api/v10/webhooks/123/aW50ZXJhY3Rpb24tokenvalue/messages/@original"


async def test_v1_aibot_answers_go_to_the_stream_and_the_socket() -> None:
    store = FakeStreamStore()
    callback = WeComAIBotDelivery(bot_id="aibot", streams=store, client=httpx.AsyncClient(), timeout=1.0)
    await callback.send(v1_chunk("wecom_aibot"), "hello", 0)
    assert store.records[("aibot", "sid-1")].content == "hello" and store.records[("aibot", "sid-1")].finish

    frames: list[tuple[str, dict[str, Any]]] = []

    async def requester(req: ConnectionRequest) -> ConnectionAnswer:
        frames.append((req.bot_id, dict(req.payload)))
        return ConnectionAnswer(ok=True)

    socket = WeComAIBotDelivery(
        bot_id="aibot", streams=store, client=httpx.AsyncClient(), timeout=1.0, requester=requester
    )
    await socket.send(v1_chunk("wecom_aibot_ws"), "hello", 0)
    [(_, frame)] = frames
    assert frame == {
        "req_id": "req-9",
        "stream_id": "sid-1",
        "content": "hello",
        "finish": True,
        "chatid": "wangwu",
    }


def test_v1_limits_are_keyed_as_before() -> None:
    app = WeComAppDelivery(
        bot_id="app",
        corp_id="ww1",
        agent_id="1000002",
        secret="s",
        api_base="http://x",
        client=httpx.AsyncClient(),
        tokens=None,  # type: ignore[arg-type]
        timeout=1.0,
    )
    assert app.limits(v1_chunk("wecom_app")) == [("wecom_app.per_user", kv_key("ww1", "1000002", "zhangsan"))]


# ---- credentials ---------------------------------------------------------------------------------------


def test_handle_models_mark_their_credentials() -> None:
    marked = {(type(h).__name__, how) for h in EXPECTED.values() for how, _ in h.credentials()}
    assert marked == {
        ("WeComGroupRobotHandle", Credential.URL),
        ("WeComAIBotHandle", Credential.URL),
        ("DingTalkHandle", Credential.URL),
        ("DiscordHandle", Credential.VALUE),
    }
    for handle in EXPECTED.values():
        for _, value in handle.credentials():
            assert value not in repr(handle)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("wecom_group_robot", "693a91f6-7xxx-robotkey"),
        ("wecom_aibot", "RespCode123"),
        ("dingtalk", "SeSsIoN42"),
        ("discord", "aW50ZXJhY3Rpb24tokenvalue"),
    ],
)
def test_reading_an_event_masks_its_handles_credentials(name: str, secret: str) -> None:
    MASKER.clear()
    try:
        assert MASKER.mask(f"got {secret}") == f"got {secret}"
        ReplyChunk.model_validate_json(json.dumps(V1[name]["chunk"]))
        assert MASKER.mask(f"got {secret}") == f"got {MASK}"
    finally:
        MASKER.clear()


@pytest.mark.parametrize(
    ("chat", "chatid"), [({"chattype": "group", "chatid": "grp1"}, "grp1"), ({"chattype": "single"}, "alice")]
)
def test_a_long_connection_frame_gets_a_socket_handle(chat: dict[str, str], chatid: str) -> None:
    from imrelay.platforms.wecom_aibot.ingress import normalize

    body = {"msgid": "m1", "msgtype": "text", "from": {"userid": "alice"}, "text": {"content": "hi"}, **chat}
    assert normalize(body, "aibot", 0.0, "sid").reply_handle == WeComAIBotHandle(stream_id="sid")
    assert normalize(body, "aibot", 0.0, "sid", req_id="rq").reply_handle == WeComAIBotHandle(
        stream_id="sid", mode="long_connection", req_id="rq", chatid=chatid
    )
