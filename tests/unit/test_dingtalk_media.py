"""DingTalk media: picture, rich text, voice, video and file messages become attachments (HTTP callbacks
and Stream frames alike); a file is fetched with its download code and the temporary URL it gives; an
answer's image is checked, uploaded with the legacy API and sent through the robot API; the simulator
refuses what DingTalk refuses."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from imrelay.config import parse_settings
from imrelay.delivery import MediaSink, MediaSource
from imrelay.delivery.tokens import TokenCache
from imrelay.errors import TokenExpiredError
from imrelay.events import Chat, ChatType, InboundMessage, ReplyChunk, Sender
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef
from imrelay.media.fetch import Downloader, Guard
from imrelay.media.simstore import put
from imrelay.platforms import spec
from imrelay.platforms.dingtalk import delivery as dingtalk
from imrelay.platforms.dingtalk.delivery import DingTalkDelivery
from imrelay.platforms.dingtalk.frames import CALLBACK, TOPIC_ROBOT, parse_frame, robot_message
from imrelay.platforms.dingtalk.handle import DingTalkHandle
from imrelay.platforms.dingtalk.ingress import normalize
from imrelay.platforms.dingtalk.sim import NotInGroups, media_content
from imrelay.platforms.dingtalk.sim import routes as sim_routes
from imrelay.platforms.spec import SimMedia
from imrelay_sim import media as sim_media
from imrelay_sim.server import SimState
from tests.fakes import FakeKV
from tests.media_files import png

SIM = "http://127.0.0.1:8090"
APP_KEY, SECRET = "dingmedia01", "ding-media-secret"


def message(msgtype: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {
        "msgId": "m1",
        "msgtype": msgtype,
        "content": content,
        "conversationId": "cid1",
        "conversationType": "1",
        "senderStaffId": "alice",
        "robotCode": APP_KEY,
        **extra,
    }


# ---- inbound ----------------------------------------------------------------------------------------


def test_a_picture_alone_is_an_image_attachment_and_no_text() -> None:
    m = normalize(message("picture", {"downloadCode": "dc1", "pictureDownloadCode": "pdc1"}), "dt", 0)
    assert m.text == ""
    assert [(a.kind, a.ref) for a in m.attachments] == [("image", "dc1")]


def test_rich_text_gives_its_text_and_its_pictures() -> None:
    content = {
        "richText": [
            {"text": "@bot what is"},
            {"type": "picture", "downloadCode": "p1", "pictureDownloadCode": "pp1"},
            {"text": " this?"},
            {"pictureDownloadCode": "pp2"},
            "junk",
        ]
    }
    m = normalize(message("richText", content), "dt", 0)
    assert m.text == "what is this?"
    assert [(a.kind, a.ref) for a in m.attachments] == [("image", "p1"), ("image", "pp2")]


def test_voice_carries_what_dingtalk_recognised() -> None:
    m = normalize(message("audio", {"downloadCode": "v1", "duration": 4000, "recognition": "hello"}), "dt", 0)
    (a,) = m.attachments
    assert (a.kind, a.ref, a.transcript) == ("voice", "v1", "hello")
    bare = normalize(message("audio", {"downloadCode": "v2"}), "dt", 0).attachments[0]
    assert bare.transcript is None and bare.ref == "v2"


def test_file_and_video_messages() -> None:
    f = normalize(message("file", {"downloadCode": "f1", "fileName": "report.pdf", "fileId": "9"}), "dt", 0)
    assert [(a.kind, a.ref, a.name) for a in f.attachments] == [("file", "f1", "report.pdf")]
    v = normalize(message("video", {"downloadCode": "vid1", "duration": 3, "videoType": "mp4"}), "dt", 0)
    assert [(a.kind, a.ref) for a in v.attachments] == [("video", "vid1")]


def test_a_media_message_without_a_download_code_has_no_attachment() -> None:
    assert normalize(message("picture", {}), "dt", 0).attachments == []
    assert normalize(message("file", "not an object"), "dt", 0).attachments == []


def test_a_stream_frame_brings_the_same_attachments() -> None:
    data = message("file", {"downloadCode": "f9", "fileName": "a.pdf"})
    raw = json.dumps(
        {
            "specVersion": "1.0",
            "type": CALLBACK,
            "headers": {"topic": TOPIC_ROBOT, "messageId": "x1", "contentType": "application/json"},
            "data": json.dumps(data),
        }
    )
    m = normalize(robot_message(parse_frame(raw)), "dt", 0)
    assert [(a.kind, a.ref, a.name) for a in m.attachments] == [("file", "f9", "a.pdf")]


def test_the_platform_declares_its_media() -> None:
    media = spec("dingtalk").media
    assert media.inbound == {MediaKind.IMAGE, MediaKind.FILE, MediaKind.VOICE, MediaKind.VIDEO}
    assert media.outbound == {MediaKind.IMAGE}
    assert media.limits[MediaKind.IMAGE] == 20 * 1024 * 1024
    assert media.note


# ---- pure outbound parts ----------------------------------------------------------------------------


def test_upload_checks_type_and_size_before_uploading() -> None:
    dingtalk.upload_check(MediaKind.IMAGE, "image/png", "a.png", 1000)
    dingtalk.upload_check(MediaKind.FILE, "application/pdf", "Report.PDF", 1000)
    for kind, mime, name in [
        (MediaKind.IMAGE, "image/webp", "a.webp"),
        (MediaKind.FILE, "application/x-dosexec", "a.exe"),
        (MediaKind.VIDEO, "video/quicktime", "a.mov"),
    ]:
        with pytest.raises(MediaError) as err:
            dingtalk.upload_check(kind, mime, name, 10)
        assert err.value.problem is MediaProblem.UNSUPPORTED
    with pytest.raises(MediaError) as err:
        dingtalk.upload_check(MediaKind.IMAGE, "image/png", "a.png", 20 * 1024 * 1024 + 1)
    assert err.value.problem is MediaProblem.OVERSIZE
    with pytest.raises(MediaError):
        dingtalk.upload_check(MediaKind.VOICE, "audio/amr", "a.amr", 2 * 1024 * 1024 + 1)


def test_upload_request_is_a_multipart_media_field() -> None:
    query, files = dingtalk.upload_request(MediaKind.IMAGE, "chart.png", b"x", "image/png")
    assert query == {"type": "image"} and files == {"media": ("chart.png", b"x", "image/png")}


def _chunk(group: bool) -> ReplyChunk:
    return ReplyChunk(
        reply_id="r1",
        inbound_id="i1",
        platform="dingtalk",
        bot_id="dt",
        chat=Chat(id="cidG" if group else "cid1", type=ChatType.GROUP if group else ChatType.DIRECT),
        recipient=Sender(id="alice"),
        seq=0,
        delta="",
        final=True,
        reply_handle=DingTalkHandle(conversation_id="cid1", robot_code=APP_KEY, sender_staff_id="alice"),
    )


def test_image_messages_go_to_the_user_or_the_group() -> None:
    path, body = dingtalk.image_message(APP_KEY, "@lAmedia", _chunk(False), "alice")
    assert path == "/v1.0/robot/oToMessages/batchSend"
    assert body["userIds"] == ["alice"] and body["msgKey"] == "sampleImageMsg"
    assert json.loads(body["msgParam"]) == {"photoURL": "@lAmedia"}
    path, body = dingtalk.image_message(APP_KEY, "@lAmedia", _chunk(True), "alice")
    assert path == "/v1.0/robot/groupMessages/send" and body["openConversationId"] == "cidG"


def test_download_answers() -> None:
    assert dingtalk.download_answer({"downloadUrl": "https://x/y"}, 200) == "https://x/y"
    with pytest.raises(TokenExpiredError):
        dingtalk.download_answer({"code": "InvalidAuthentication"}, 401)
    with pytest.raises(MediaError) as err:
        dingtalk.download_answer({"code": "invalidParameter.downloadCode", "message": "x"}, 400)
    assert err.value.problem is MediaProblem.DOWNLOAD_FAILED
    assert err.value.detail == "invalidParameter.downloadCode"


def test_legacy_token_errors_renew_the_token() -> None:
    with pytest.raises(TokenExpiredError):
        dingtalk.check({"errcode": 40014, "errmsg": "invalid access_token"}, 200, None, 60.0)


# ---- the simulator's message shapes -----------------------------------------------------------------


def _sim_media(kind: str, name: str = "x") -> SimMedia:
    return SimMedia(kind=kind, id=f"sim{kind}", name=name, size=1, sha256="0", md5="0")


def test_simulated_messages_with_media() -> None:
    assert media_content("", (_sim_media("image"),), False)["msgtype"] == "picture"
    rich = media_content("look", (_sim_media("image"),), True)
    assert rich["msgtype"] == "richText" and len(rich["content"]["richText"]) == 2
    voice = media_content("hi", (_sim_media("voice"),), False)
    assert voice == {
        "msgtype": "audio",
        "content": {"downloadCode": "simvoice", "duration": 3000, "recognition": "hi"},
    }
    f = media_content("", (_sim_media("file", "a.pdf"),), False)
    assert f["msgtype"] == "file" and f["content"]["fileName"] == "a.pdf"
    for kind in ("voice", "file", "video"):
        with pytest.raises(NotInGroups):
            media_content("", (_sim_media(kind),), True)


# ---- the delivery against the simulator, in process --------------------------------------------------


@pytest.fixture
def sim() -> Any:
    settings = parse_settings(
        {
            "backends": {"default": {"kind": "echo"}},
            "bots": [
                {
                    "id": "dt",
                    "platform": "dingtalk",
                    "api_base": SIM,
                    "credentials": {"app_key": APP_KEY, "app_secret": SECRET},
                }
            ],
        },
        {},
    )
    state = SimState.from_settings(settings)
    return state, Starlette(routes=[*sim_media.routes(state), *sim_routes(state)])


def _delivery(client: httpx.AsyncClient) -> DingTalkDelivery:
    return DingTalkDelivery(
        bot_id="dt",
        app_key=APP_KEY,
        app_secret=SECRET,
        api_base=SIM,
        client=client,
        tokens=TokenCache(FakeKV()),
        timeout=5,
        oapi_base=SIM,
    )


def _inbound(ref: str, kind: str = "image") -> InboundMessage:
    m = normalize(message("picture", {"downloadCode": ref}), "dt", time.time())
    if kind != "image":
        m = m.model_copy(update={"attachments": [m.attachments[0].model_copy(update={"kind": kind})]})
    return m


async def test_a_users_picture_is_fetched_byte_exact(sim: Any) -> None:
    state, app = sim
    data = png()
    item = put(state, data, name="p.png", kind="image", origin="user")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        delivery = _delivery(client)
        assert isinstance(delivery, MediaSource) and isinstance(delivery, MediaSink)
        download = Downloader(client, client, Guard(["127.0.0.0/8"]), 1 << 20)
        inbound = _inbound(item.id)
        fetched = await delivery.fetch_media(inbound, inbound.attachments[0], download)
        assert hashlib.sha256(fetched.data).hexdigest() == item.sha256
        # an unknown code: DingTalk's code, never the token
        with pytest.raises(MediaError) as err:
            await delivery.fetch_media(
                inbound, inbound.attachments[0].model_copy(update={"ref": "nope"}), download
            )
        assert err.value.problem is MediaProblem.DOWNLOAD_FAILED
        assert err.value.detail == "invalidParameter.downloadCode"
        # beyond the limit: refused while reading
        with pytest.raises(MediaError) as err:
            await delivery.fetch_media(inbound, inbound.attachments[0], download.with_limit(10))
        assert err.value.problem is MediaProblem.OVERSIZE
        # the download URL is refused where the guard does not allow the simulator's address
        with pytest.raises(MediaError) as err:
            await delivery.fetch_media(
                inbound, inbound.attachments[0], Downloader(client, client, Guard(), 1 << 20)
            )
        assert err.value.problem is MediaProblem.BLOCKED


async def test_an_answers_image_is_uploaded_and_sent(sim: Any) -> None:
    state, app = sim
    data = png(3, 3)
    ref = MediaRef(
        kind=MediaKind.IMAGE,
        key="out/r1/0",
        name="chart.png",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        mime="image/png",
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        delivery = _delivery(client)
        for group in (False, True):
            await delivery.send_media(_chunk(group), ref, data, 1)
        gif = ref.model_copy(update={"mime": "image/webp"})
        with pytest.raises(MediaError) as err:
            await delivery.send_media(_chunk(False), gif, data, 2)
        assert err.value.problem is MediaProblem.UNSUPPORTED
    sent = [m for m in state.messages if m.get("msgtype") == "image"]
    assert [m["chat"] for m in sent] == ["alice", "cidG"]
    assert all(m["media"]["sha256"] == ref.sha256 and m["media"]["origin"] == "upload" for m in sent)
    assert sent[0]["content"] == "[image chart.png]"


async def test_the_simulated_upload_is_strict(sim: Any) -> None:
    _, app = sim
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SIM) as client:
        bad = await client.post("/media/upload", params={"access_token": "x", "type": "image"})
        assert bad.json()["errcode"] == 40014
        tok = (await client.get("/gettoken", params={"appkey": APP_KEY, "appsecret": SECRET})).json()
        q = {"access_token": tok["access_token"]}
        kinds = await client.post("/media/upload", params={**q, "type": "sticker"})
        assert kinds.json()["errcode"] == 40004
        text_as_image = await client.post(
            "/media/upload", params={**q, "type": "image"}, files={"media": ("a.png", b"hello", "image/png")}
        )
        assert text_as_image.json()["errcode"] == 40005
        big = await client.post(
            "/media/upload",
            params={**q, "type": "voice"},
            files={"media": ("a.amr", b"#!AMR\n" + b"\0" * (2 * 1024 * 1024), "audio/amr")},
        )
        assert big.json()["errcode"] == 40006
        ok = await client.post(
            "/media/upload",
            params={**q, "type": "file"},
            files={"media": ("a.pdf", b"%PDF-1.4\n", "application/pdf")},
        )
        assert ok.json()["errcode"] == 0 and ok.json()["media_id"]


def test_received_at_is_the_callbacks_time() -> None:
    m = normalize(message("picture", {"downloadCode": "d"}), "dt", 1_700_000_000)
    assert m.received_at == datetime.fromtimestamp(1_700_000_000, UTC)


async def test_tokens_dingtalk_no_longer_takes_are_renewed_once(sim: Any) -> None:
    from imrelay.delivery.tokens import TokenRecord
    from imrelay.subjects import kv_key

    state, app = sim
    data = png()
    item = put(state, data, name="p.png", kind="image", origin="user")
    kv = FakeKV()
    stale = TokenRecord(token="revoked", expires_at=time.time() + 3600, fetched_at=time.time())
    await kv.put(kv_key("dingtalk", APP_KEY), stale.to_json())
    await kv.put(kv_key("dingtalk", APP_KEY, "oapi"), stale.to_json())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        delivery = _delivery(client)
        delivery.tokens = TokenCache(kv)
        download = Downloader(client, client, Guard(["127.0.0.0/8"]), 1 << 20)
        inbound = _inbound(item.id)
        fetched = await delivery.fetch_media(inbound, inbound.attachments[0], download)
        assert fetched.data == data
        ref = MediaRef(
            kind=MediaKind.IMAGE, key="k", name="a.png", size=len(data), sha256=item.sha256, mime="image/png"
        )
        await delivery.send_media(_chunk(False), ref, data, 0)
    assert [m["media"]["sha256"] for m in state.messages if m.get("msgtype") == "image"] == [item.sha256]
    assert "revoked" not in state.issued
