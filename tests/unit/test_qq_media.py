"""QQ media: attachments of one-to-one, group and channel messages become attachments (a message with
only media is a message); a user's file is fetched from the URL QQ gave, through the guard; an answer's
image is checked, uploaded as base64 and sent as a media reply with the next ``msg_seq``; the simulator
refuses what QQ refuses."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from imrelay.config import parse_settings
from imrelay.delivery import MediaSink, MediaSource
from imrelay.delivery.tokens import TokenCache
from imrelay.errors import PermanentUpstreamError, TransientUpstreamError
from imrelay.events import Chat, ChatType, InboundMessage, ReplyChunk, Sender
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef
from imrelay.media.fetch import Downloader, Guard
from imrelay.media.simstore import put
from imrelay.platforms import spec
from imrelay.platforms.qq import delivery as qq
from imrelay.platforms.qq.config import QQBot
from imrelay.platforms.qq.delivery import QQDelivery
from imrelay.platforms.qq.handle import QQHandle
from imrelay.platforms.qq.ingress import Envelope, normalize
from imrelay.platforms.qq.sim import FILE_INFO_TTL, attachments, callback
from imrelay.platforms.qq.sim import routes as sim_routes
from imrelay.platforms.spec import SimMedia
from imrelay_sim import media as sim_media
from imrelay_sim.server import SimState
from tests.fakes import FakeKV
from tests.media_files import pdf, png

SIM = "http://127.0.0.1:8090"
APP_ID, SECRET = "102030999", "qqmediasecret0123456789"


def envelope(event: str, attachments: list[Any], content: str = "", **d: Any) -> Envelope:
    author = {"C2C_MESSAGE_CREATE": "user_openid", "GROUP_AT_MESSAGE_CREATE": "member_openid"}.get(
        event, "id"
    )
    body = {"id": "m1", "content": content, "author": {author: "u1"}, "attachments": attachments, **d}
    return Envelope(op=0, t=event, d=body)


PICTURE: dict[str, Any] = {
    "content_type": "image/png",
    "filename": "B1C2.png",
    "height": 64,
    "width": 64,
    "size": 2048,
    "url": "https://multimedia.nt.qq.com.cn/download?appid=1407&fileid=abc&rkey=xyz",
}


# ---- inbound ----------------------------------------------------------------------------------------


def test_a_picture_alone_is_a_message_with_an_image_attachment() -> None:
    m = normalize(envelope("C2C_MESSAGE_CREATE", [PICTURE]), "qq", 0)
    assert m is not None and m.text == ""
    (a,) = m.attachments
    assert (a.kind, a.ref, a.name, a.size, a.mime) == ("image", PICTURE["url"], "B1C2.png", 2048, "image/png")


def test_group_text_with_a_file_and_a_video() -> None:
    atts = [
        {"content_type": "file", "filename": "report.pdf", "size": "52100", "url": "https://f.qq/x"},
        {"content_type": "video/mp4", "filename": "clip.mp4", "size": 10, "url": "https://f.qq/v"},
    ]
    m = normalize(envelope("GROUP_AT_MESSAGE_CREATE", atts, " look", group_openid="g1"), "qq", 0)
    assert m is not None and m.text == "look"
    assert [(a.kind, a.name, a.size, a.mime) for a in m.attachments] == [
        ("file", "report.pdf", 52100, None),
        ("video", "clip.mp4", 10, "video/mp4"),
    ]


def test_voice_carries_qqs_recognition_and_prefers_the_wav_copy() -> None:
    voice = {
        "content_type": "voice",
        "filename": "v.amr",
        "size": 900,
        "url": "https://f.qq/silk",
        "voice_wav_url": "https://f.qq/wav",
        "asr_refer_text": "what time is it",
    }
    m = normalize(envelope("C2C_MESSAGE_CREATE", [voice]), "qq", 0)
    assert m is not None
    (a,) = m.attachments
    assert (a.kind, a.ref, a.mime, a.transcript) == (
        "voice",
        "https://f.qq/wav",
        "audio/wav",
        "what time is it",
    )
    bare = {"content_type": "voice", "url": "https://f.qq/silk"}
    m = normalize(envelope("C2C_MESSAGE_CREATE", [bare]), "qq", 0)
    assert (
        m is not None and m.attachments[0].transcript is None and m.attachments[0].ref == "https://f.qq/silk"
    )


def test_channel_urls_without_a_scheme_are_https_and_odd_entries_are_dropped() -> None:
    atts = [
        {"content_type": "image/jpeg", "url": "gchat.qpic.cn/qmeetpic/0/pic.jpg", "size": -1},
        {"content_type": "image/jpeg"},  # no URL: nothing to fetch
    ]
    m = normalize(envelope("AT_MESSAGE_CREATE", atts, "<@!123> hi", channel_id="c1", guild_id="g"), "qq", 0)
    assert m is not None and m.text == "hi"
    (a,) = m.attachments
    assert a.ref == "https://gchat.qpic.cn/qmeetpic/0/pic.jpg" and a.size is None


def test_the_platform_declares_its_media() -> None:
    media = spec("qq").media
    assert media.inbound == {MediaKind.IMAGE, MediaKind.FILE, MediaKind.VOICE, MediaKind.VIDEO}
    assert media.outbound == {MediaKind.IMAGE}
    assert media.limits[MediaKind.IMAGE] == qq.UPLOAD_LIMITS[MediaKind.IMAGE]
    assert media.note


# ---- pure outbound parts ----------------------------------------------------------------------------


def test_upload_checks_type_and_size_before_uploading() -> None:
    assert qq.upload_check(MediaKind.IMAGE, "image/png", 1000) == 1
    assert qq.upload_check(MediaKind.VIDEO, "video/mp4", 1000) == 2
    assert qq.upload_check(MediaKind.VOICE, "audio/silk", 1000) == 3
    for kind, mime in [
        (MediaKind.IMAGE, "image/webp"),
        (MediaKind.IMAGE, "image/gif"),
        (MediaKind.FILE, "application/pdf"),
        (MediaKind.VOICE, "audio/amr"),
    ]:
        with pytest.raises(MediaError) as err:
            qq.upload_check(kind, mime, 10)
        assert err.value.problem is MediaProblem.UNSUPPORTED
    with pytest.raises(MediaError) as err:
        qq.upload_check(MediaKind.IMAGE, "image/png", 30 * 1024 * 1024 + 1)
    assert err.value.problem is MediaProblem.OVERSIZE


def test_the_upload_carries_the_bytes_and_does_not_send() -> None:
    body = qq.upload_body(1, b"\x89PNG")
    assert body == {"file_type": 1, "file_data": base64.b64encode(b"\x89PNG").decode(), "srv_send_msg": False}
    assert qq.media_message("INFO", "m1", 3) == {
        "msg_type": 7,
        "media": {"file_info": "INFO"},
        "msg_id": "m1",
        "msg_seq": 3,
    }
    with pytest.raises(TransientUpstreamError):
        qq.file_info({"file_uuid": "x"})


def test_rich_media_fetch_failures_are_retried() -> None:
    with pytest.raises(TransientUpstreamError):
        qq.check({"code": 304082, "message": "rich media fetch failed"}, 400, None, 60.0)
    with pytest.raises(PermanentUpstreamError):
        qq.check({"code": 40034003, "message": "bad type"}, 400, None, 60.0)


def _chunk(kind: str = "c2c", text: str = "", images: int = 0, age: float = 0) -> ReplyChunk:
    target = {"c2c": "u1", "group": "g1", "channel": "c1"}[kind]
    ref = MediaRef(kind=MediaKind.IMAGE, key="k", size=1, sha256="0", mime="image/png")
    return ReplyChunk(
        reply_id="r1",
        inbound_id="i1",
        platform="qq",
        bot_id="qq",
        chat=Chat(id=target, type=ChatType.DIRECT if kind == "c2c" else ChatType.GROUP),
        recipient=Sender(id="u1"),
        seq=0,
        delta="",
        full_text=text,
        final=True,
        media=[ref] * images,
        received_at=datetime.now(UTC) - timedelta(seconds=age),
        reply_handle=QQHandle(target_kind=kind, target=target, msg_id=f"m-{kind}"),
    )


def test_an_answers_images_keep_room_among_the_five_replies() -> None:
    d = QQDelivery("qq", APP_ID, SECRET, SIM, SIM, httpx.AsyncClient(), TokenCache(FakeKV()), 5)
    long = "x" * (qq.TEXT_LIMIT_BYTES * 7)
    assert len(d.render(_chunk(text=long))) == 5
    assert len(d.render(_chunk(text=long, images=2))) == 3
    assert len(d.render(_chunk(text=long, images=9))) == 1
    assert len(d.render(_chunk(text="short", images=2))) == 1


# ---- the simulator's message shapes -----------------------------------------------------------------


def _sim_media(kind: str, name: str = "x", mime: str = "application/octet-stream") -> SimMedia:
    return SimMedia(kind=kind, id=f"sim{kind}", name=name, size=7, sha256="0", md5="0", mime=mime)


def test_simulated_messages_with_media() -> None:
    atts = attachments((_sim_media("image", "a.png", "image/png"), _sim_media("file", "a.pdf")), SIM)
    assert [a["content_type"] for a in atts] == ["image/png", "file"]
    assert atts[0]["url"] == f"{SIM}/sim/media/simimage" and atts[1]["size"] == 7
    bot = QQBot.model_validate(
        {"id": "qq", "platform": "qq", "credentials": {"app_id": APP_ID, "app_secret": SECRET}}
    )
    _, body = callback(bot, "hello", "u1", "", "m9", time.time(), (_sim_media("voice"),), SIM)
    d = json.loads(body)["d"]
    assert d["content"] == "" and d["attachments"][0]["asr_refer_text"] == "hello"


# ---- the delivery against the simulator, in process --------------------------------------------------


@pytest.fixture
def sim() -> Any:
    settings = parse_settings(
        {
            "backends": {"default": {"kind": "echo"}},
            "bots": [
                {
                    "id": "qq",
                    "platform": "qq",
                    "api_base": SIM,
                    "auth_base": SIM,
                    "credentials": {"app_id": APP_ID, "app_secret": SECRET},
                }
            ],
        },
        {},
    )
    state = SimState.from_settings(settings)
    return state, Starlette(routes=[*sim_media.routes(state), *sim_routes(state)])


def _delivery(client: httpx.AsyncClient) -> QQDelivery:
    return QQDelivery("qq", APP_ID, SECRET, SIM, SIM, client, TokenCache(FakeKV()), 5)


def _inbound(url: str) -> InboundMessage:
    m = normalize(envelope("C2C_MESSAGE_CREATE", [{**PICTURE, "url": url}]), "qq", time.time())
    assert m is not None
    return m


async def test_a_users_picture_is_fetched_byte_exact(sim: Any) -> None:
    state, app = sim
    data = png()
    item = put(state, data, name="p.png", kind="image", origin="user")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        delivery = _delivery(client)
        assert isinstance(delivery, MediaSource) and isinstance(delivery, MediaSink)
        download = Downloader(client, client, Guard(["127.0.0.0/8"]), 1 << 20)
        inbound = _inbound(f"{SIM}/sim/media/{item.id}")
        fetched = await delivery.fetch_media(inbound, inbound.attachments[0], download)
        assert hashlib.sha256(fetched.data).hexdigest() == item.sha256
        missing = _inbound(f"{SIM}/sim/media/nope")
        with pytest.raises(MediaError) as err:
            await delivery.fetch_media(missing, missing.attachments[0], download)
        assert err.value.problem is MediaProblem.DOWNLOAD_FAILED
        with pytest.raises(MediaError) as err:
            await delivery.fetch_media(inbound, inbound.attachments[0], download.with_limit(10))
        assert err.value.problem is MediaProblem.OVERSIZE
        with pytest.raises(MediaError) as err:  # the guard refuses the simulator's address by default
            await delivery.fetch_media(
                inbound, inbound.attachments[0], Downloader(client, client, Guard(), 1 << 20)
            )
        assert err.value.problem is MediaProblem.BLOCKED


def _ref(data: bytes, mime: str = "image/png") -> MediaRef:
    return MediaRef(
        kind=MediaKind.IMAGE,
        key="out/r1/0",
        name="chart.png",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        mime=mime,
    )


async def test_an_answers_image_is_uploaded_and_sent_as_the_next_reply(sim: Any) -> None:
    state, app = sim
    data = png(3, 3)
    ref = _ref(data)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        delivery = _delivery(client)
        for kind in ("c2c", "group"):
            await delivery.send(_chunk(kind, "here"), "here", 0)
            await delivery.send_media(_chunk(kind, "here", 1), ref, data, 1)
        with pytest.raises(MediaError) as err:
            await delivery.send_media(_chunk("c2c"), ref.model_copy(update={"mime": "image/webp"}), data, 2)
        assert err.value.problem is MediaProblem.UNSUPPORTED
        with pytest.raises(MediaError) as err:  # guild channels take no uploads
            await delivery.send_media(_chunk("channel"), ref, data, 1)
        assert err.value.problem is MediaProblem.UNSUPPORTED
        with pytest.raises(MediaError) as err:  # a sixth reply: QQ would refuse it
            await delivery.send_media(_chunk("c2c"), ref, data, 5)
        assert err.value.problem is MediaProblem.UNSUPPORTED
        with pytest.raises(PermanentUpstreamError):  # the one-to-one window (60 minutes) is over
            await delivery.send_media(_chunk("c2c", age=3700), ref, data, 3)
        await delivery.send(_chunk("c2c"), "a sixth part", 5)  # not posted: QQ takes five
    sent = [m for m in state.messages if m.get("msgtype") == "image"]
    assert [(m["chat"], m["msg_seq"], m["reply_to"]) for m in sent] == [
        ("u1", 2, "m-c2c"),
        ("g1", 2, "m-group"),
    ]
    assert all(m["media"]["sha256"] == ref.sha256 and m["media"]["origin"] == "upload" for m in sent)
    assert sent[0]["content"].startswith("[image ")
    assert not any(m.get("content") == "a sixth part" for m in state.messages)


async def test_the_simulated_upload_and_media_message_are_strict(sim: Any) -> None:
    _, app = sim
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SIM) as client:
        image = base64.b64encode(png()).decode()
        bad = await client.post("/v2/users/u1/files", json={"file_type": 1, "file_data": image})
        assert bad.status_code == 401
        tok = (
            await client.post("/app/getAppAccessToken", json={"appId": APP_ID, "clientSecret": SECRET})
        ).json()
        h = {"Authorization": f"QQBot {tok['access_token']}"}

        async def upload(body: dict[str, Any], chat: str = "/v2/users/u1") -> dict[str, Any]:
            got: dict[str, Any] = (await client.post(f"{chat}/files", json=body, headers=h)).json()
            return got

        assert (await upload({"file_type": 4, "file_data": base64.b64encode(pdf()).decode()}))["code"]
        assert (await upload({"file_type": 1, "file_data": "not base64!"}))["code"]
        assert (await upload({"file_type": 1, "file_data": base64.b64encode(pdf()).decode()}))["code"]
        assert (await upload({"file_type": 1, "url": "https://example.com/a.png"}))["code"] == 304082
        assert (await upload({"file_type": 1, "file_data": image, "srv_send_msg": True}))["code"] == 304003
        big = base64.b64encode(png(noise=30 * 1024 * 1024)).decode()
        assert (await upload({"file_type": 1, "file_data": big}))["code"]
        ok = await upload({"file_type": 1, "file_data": image, "srv_send_msg": False})
        assert ok["file_info"] and ok["ttl"] == FILE_INFO_TTL

        async def show(chat: str, info: str, seq: int) -> httpx.Response:
            body = {"msg_type": 7, "media": {"file_info": info}, "msg_id": "m1", "msg_seq": seq}
            return await client.post(f"{chat}/messages", json=body, headers=h)

        assert (await show("/v2/users/u1", "unknown", 1)).status_code == 400
        assert (await show("/v2/groups/g1", ok["file_info"], 1)).status_code == 400  # another chat's
        assert (await show("/v2/users/u1", ok["file_info"], 1)).status_code == 200


async def test_a_token_qq_no_longer_takes_is_renewed_for_the_upload(sim: Any) -> None:
    from imrelay.delivery.tokens import TokenRecord
    from imrelay.subjects import kv_key

    state, app = sim
    data = png()
    kv = FakeKV()
    stale = TokenRecord(token="revoked", expires_at=time.time() + 3600, fetched_at=time.time())
    await kv.put(kv_key("qq", APP_ID), stale.to_json())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        delivery = QQDelivery("qq", APP_ID, SECRET, SIM, SIM, client, TokenCache(kv), 5)
        await delivery.send_media(_chunk("c2c", "x", 1), _ref(data), data, 1)
    (sent,) = [m for m in state.messages if m.get("msgtype") == "image"]
    assert sent["media"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert state.stats["qq_upload"] == 2 and len(state.issued) == 1  # refused once, then a new token
    assert "revoked" not in repr(delivery) and SECRET not in repr(delivery)
