"""Feishu / Lark media: messages with pictures, files, voice and video become attachments; the delivery
downloads them with the message resource API and uploads an answer's pictures (into the streamed card, or
as image replies); the simulator plays those APIs as strictly as Feishu."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from imrelay.config import Settings, parse_settings
from imrelay.delivery.tokens import TokenCache
from imrelay.events import Attachment, Chat, ChatType, InboundMessage, ReplyChunk, Sender
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef
from imrelay.media.fetch import Downloader, Fetched, Guard
from imrelay.platforms import spec_for
from imrelay.platforms.feishu import delivery as feishu
from imrelay.platforms.feishu.config import FeishuBot
from imrelay.platforms.feishu.delivery import FeishuDelivery
from imrelay.platforms.feishu.handle import FeishuHandle
from imrelay.platforms.feishu.ingress import Envelope, normalize
from imrelay.platforms.feishu.sim import event_json
from imrelay.platforms.spec import SimMedia
from imrelay_sim.server import create_app
from tests.fakes import FakeKV

API = "http://sim.test"
APP_ID = "cli_media01"
SECRET = "media-secret"


def png(width: int = 2, height: int = 2, seed: int = 0) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes([seed % 256, y % 256, 7]) * width for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def settings(mode: str = "callback") -> Settings:
    return parse_settings(
        {
            "bots": [
                {
                    "id": "fs",
                    "platform": "feishu",
                    "mode": mode,
                    "api_base": API,
                    "credentials": {
                        "app_id": APP_ID,
                        "app_secret": SECRET,
                        "encrypt_key": "ek",
                        "verification_token": "vt",
                    },
                }
            ]
        },
        {},
    )


def bot() -> FeishuBot:
    [b] = settings().bots
    assert isinstance(b, FeishuBot)
    return b


def event(content: dict[str, Any], message_type: str, chat_type: str = "p2p") -> Envelope:
    return Envelope.model_validate(
        {
            "header": {"event_id": "ev1", "event_type": "im.message.receive_v1", "app_id": APP_ID},
            "event": {
                "sender": {"sender_id": {"open_id": "ou_alice"}},
                "message": {
                    "message_id": "om_1",
                    "chat_id": "oc_1",
                    "chat_type": chat_type,
                    "message_type": message_type,
                    "content": json.dumps(content),
                    "mentions": [{"key": "@_user_1", "name": "bot"}] if chat_type == "group" else [],
                },
            },
        }
    )


# ---- inbound ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_type", "content", "kind", "ref", "name"),
    [
        ("image", {"image_key": "img_v3_a"}, "image", "img_v3_a", ""),
        ("file", {"file_key": "file_v3_b", "file_name": "report.pdf"}, "file", "file_v3_b", "report.pdf"),
        ("audio", {"file_key": "file_v3_c", "duration": 2000}, "voice", "file_v3_c", ""),
        (
            "media",
            {"file_key": "file_v3_d", "file_name": "clip.mp4", "image_key": "img_x"},
            "video",
            "file_v3_d",
            "clip.mp4",
        ),
    ],
)
def test_media_messages_become_attachments(
    message_type: str, content: dict[str, Any], kind: str, ref: str, name: str
) -> None:
    msg = normalize(event(content, message_type), "feishu", "fs", 1.0)
    assert msg is not None
    assert msg.text == ""  # published all the same: the worker reads the attachment
    assert msg.attachments == [Attachment(kind=kind, ref=ref, name=name)]
    assert FeishuHandle.of(msg).message_id == "om_1"  # what the resource API needs besides the key


def test_media_message_without_a_key_has_no_attachment() -> None:
    msg = normalize(event({"file_name": "x"}, "file"), "feishu", "fs", 1.0)
    assert msg is not None and msg.attachments == []


def test_post_text_and_pictures() -> None:
    content = {
        "title": "Look",
        "content": [
            [{"tag": "at", "user_id": "@_user_1", "user_name": "bot"}, {"tag": "text", "text": " what is "}],
            [{"tag": "img", "image_key": "img_v3_1", "width": 10, "height": 10}],
            [{"tag": "a", "text": "this", "href": "https://x"}, {"tag": "img", "image_key": "img_v3_2"}],
        ],
    }
    msg = normalize(event(content, "post", "group"), "feishu", "fs", 1.0)
    assert msg is not None
    assert msg.text == "Look\nwhat is\nthis"  # the bot addressed: its mention dropped
    assert msg.mentioned
    assert [a.ref for a in msg.attachments] == ["img_v3_1", "img_v3_2"]
    assert {a.kind for a in msg.attachments} == {"image"}


def test_post_by_locale() -> None:
    content = {
        "zh_cn": {
            "title": "",
            "content": [[{"tag": "text", "text": "你好"}, {"tag": "img", "image_key": "k"}]],
        }
    }
    msg = normalize(event(content, "post"), "feishu", "fs", 1.0)
    assert msg is not None and msg.text == "你好" and [a.ref for a in msg.attachments] == ["k"]


def test_simulated_events_carry_media_the_feishu_way() -> None:
    b = bot()
    image = SimMedia("image", "simA", "a.png", 10, "0" * 64, "0" * 32, "image/png")
    doc = SimMedia("file", "simB", "b.pdf", 10, "0" * 64, "0" * 32, "application/pdf")
    for media, text, want in [
        ((image,), "", ("image", ["simA"], "")),
        ((image,), "what is this", ("post", ["simA"], "what is this")),
        ((doc,), "", ("file", ["simB"], "")),
    ]:
        raw = event_json(b, text, "ou_u", "oc_g", "group", "ev", "om_9", 1.0, media)
        assert raw["event"]["message"]["message_type"] == want[0]
        msg = normalize(Envelope.model_validate(raw), "feishu", "fs", 1.0, by_message_id=True)
        assert msg is not None
        assert [a.ref for a in msg.attachments] == want[1]
        assert msg.text == want[2]
        if want[0] == "file":
            assert msg.attachments[0].name == "b.pdf"


def test_spec_declares_media() -> None:
    media = spec_for(bot()).media
    assert media.inbound == {MediaKind.IMAGE, MediaKind.FILE, MediaKind.VOICE, MediaKind.VIDEO}
    assert media.outbound == {MediaKind.IMAGE, MediaKind.FILE}
    assert media.limits[MediaKind.IMAGE] == 10 * 1024 * 1024
    assert media.limits[MediaKind.FILE] == 30 * 1024 * 1024
    assert media.inbound_limits[MediaKind.VIDEO] == 100 * 1024 * 1024
    assert media.note


# ---- pure delivery parts ----------------------------------------------------------------------------


def test_resource_requests() -> None:
    assert feishu.resource_type("image") == "image"
    assert {feishu.resource_type(k) for k in ("file", "voice", "video")} == {"file"}
    assert feishu.resource_path("om_1", "img/../x") == "/open-apis/im/v1/messages/om_1/resources/img%2F..%2Fx"


@pytest.mark.parametrize(
    ("fetched", "want"),
    [
        (Fetched(b"\x89PNG", 200, "image/png"), None),
        (Fetched(b'{"a": 1}', 200, "application/json"), None),  # a JSON file
        (
            Fetched(b'{"code": 234003, "msg": "File not in msg"}', 400, "application/json"),
            (234003, MediaProblem.DOWNLOAD_FAILED),
        ),
        (
            Fetched(b'{"code": 234037, "msg": "too big"}', 400, "application/json"),
            (234037, MediaProblem.OVERSIZE),
        ),
        (Fetched(b"<html>", 502, "text/html"), ("HTTP 502", MediaProblem.DOWNLOAD_FAILED)),
    ],
)
def test_resource_answers(fetched: Fetched, want: tuple[Any, MediaProblem] | None) -> None:
    assert feishu.resource_error(fetched) == want


def ref(kind: MediaKind, data: bytes, mime: str, name: str = "chart.png") -> MediaRef:
    return MediaRef(
        kind=kind,
        key="out/r/0",
        name=name,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        mime=mime,
    )


def test_outbound_checks() -> None:
    image = png()
    assert feishu.check_outbound(ref(MediaKind.IMAGE, image, "image/png"), image) is MediaKind.IMAGE
    big = b"\x89PNG" + bytes(10 * 1024 * 1024)
    with pytest.raises(MediaError) as err:
        feishu.check_outbound(ref(MediaKind.IMAGE, big, "image/png"), big)
    assert err.value.problem is MediaProblem.OVERSIZE
    with pytest.raises(MediaError) as err:
        feishu.check_outbound(ref(MediaKind.IMAGE, image, "image/svg+xml"), image)
    assert err.value.problem is MediaProblem.UNSUPPORTED
    assert feishu.check_outbound(ref(MediaKind.FILE, PDF, "application/pdf", "a.pdf"), PDF) is MediaKind.FILE
    with pytest.raises(MediaError) as err:
        feishu.check_outbound(ref(MediaKind.VOICE, b"OggS", "audio/ogg"), b"OggS")
    assert err.value.problem is MediaProblem.UNSUPPORTED


def test_upload_forms() -> None:
    image = png()
    path, fields, files = feishu.upload_form(MediaKind.IMAGE, ref(MediaKind.IMAGE, image, "image/png"), image)
    assert path == "/open-apis/im/v1/images" and fields == {"image_type": "message"}
    assert files["image"] == ("chart.png", image, "image/png")
    path, fields, files = feishu.upload_form(
        MediaKind.FILE, ref(MediaKind.FILE, PDF, "application/pdf", "r.pdf"), PDF
    )
    assert path == "/open-apis/im/v1/files" and fields == {"file_type": "pdf", "file_name": "r.pdf"}
    assert feishu.file_type("application/zip", "a.zip") == "stream"
    assert feishu.file_type("application/octet-stream", "deck.PPTX") == "ppt"
    assert feishu.media_message(MediaKind.IMAGE, "img_1") == ("image", '{"image_key": "img_1"}')


# ---- against the simulated API ----------------------------------------------------------------------


class MemoryMedia:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def find(self, key: str) -> MediaRef | None:
        return None

    async def put(self, key: str, data: bytes, *, kind: MediaKind, name: str, mime: str) -> MediaRef:
        self.data[key] = data
        return MediaRef(
            kind=kind, key=key, name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest(), mime=mime
        )

    async def get(self, ref: MediaRef) -> bytes:
        return self.data[ref.key]


@dataclass
class Sim:
    client: httpx.AsyncClient
    delivery: FeishuDelivery
    media: MemoryMedia

    async def user_file(self, data: bytes, name: str, kind: str) -> str:
        resp = await self.client.post(f"{API}/sim/media", params={"name": name, "kind": kind}, content=data)
        return str(resp.json()["id"])

    async def messages(self) -> list[dict[str, Any]]:
        return list((await self.client.get(f"{API}/sim/messages", params={"bot": "fs"})).json())

    def download(self, limit: int = 100 * 1024 * 1024) -> Downloader:
        return Downloader(self.client, self.client, Guard(), limit)


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    app = create_app(settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=5) as client:
        media = MemoryMedia()
        delivery = FeishuDelivery(
            bot_id="fs",
            platform="feishu",
            app_id=APP_ID,
            app_secret=SECRET,
            api_base=API,
            client=client,
            tokens=TokenCache(FakeKV("tokens")),
            timeout=5,
            streams=FakeKV("deliveries"),
            media=media,
        )
        yield Sim(client, delivery, media)


def inbound(attachment: Attachment) -> InboundMessage:
    return InboundMessage(
        id="in1",
        platform="feishu",
        bot_id="fs",
        platform_message_id="feishu:event:ev1",
        chat=Chat(id="oc_1", type=ChatType.DIRECT),
        sender=Sender(id="ou_alice"),
        attachments=[attachment],
        reply_handle=FeishuHandle(kind="feishu", message_id="om_1", chat_id="oc_1", open_id="ou_alice"),
    )


def chunk(text: str, media: list[MediaRef], seq: int = 0, reply_id: str = "r1") -> ReplyChunk:
    return ReplyChunk(
        reply_id=reply_id,
        inbound_id="in1",
        platform="feishu",
        bot_id="fs",
        chat=Chat(id="oc_1", type=ChatType.DIRECT),
        recipient=Sender(id="ou_alice"),
        reply_handle=FeishuHandle(kind="feishu", message_id="om_1", chat_id="oc_1", open_id="ou_alice"),
        seq=seq,
        final=True,
        full_text=text,
        media=media,
    )


async def test_fetches_a_picture_and_a_file_byte_exact(sim: Sim) -> None:
    image = png(seed=3)
    image_id = await sim.user_file(image, "p.png", "image")
    got = await sim.delivery.fetch_media(
        inbound(Attachment(kind="image", ref=image_id)),
        Attachment(kind="image", ref=image_id),
        sim.download(),
    )
    assert got.data == image and got.filename == "p.png"
    pdf_id = await sim.user_file(PDF, "r.pdf", "file")
    att = Attachment(kind="file", ref=pdf_id, name="r.pdf")
    assert (await sim.delivery.fetch_media(inbound(att), att, sim.download())).data == PDF


async def test_download_refusals(sim: Sim) -> None:
    missing = Attachment(kind="image", ref="img_nope")
    with pytest.raises(MediaError) as err:
        await sim.delivery.fetch_media(inbound(missing), missing, sim.download())
    assert (err.value.problem, err.value.detail) == (MediaProblem.DOWNLOAD_FAILED, "234003")
    pdf_id = await sim.user_file(PDF, "r.pdf", "file")
    wrong = Attachment(kind="image", ref=pdf_id)  # a file asked for as an image: Feishu refuses
    with pytest.raises(MediaError) as err:
        await sim.delivery.fetch_media(inbound(wrong), wrong, sim.download())
    assert err.value.detail == "234001"
    att = Attachment(kind="file", ref=pdf_id)
    with pytest.raises(MediaError) as err:
        await sim.delivery.fetch_media(inbound(att), att, sim.download(limit=10))
    assert err.value.problem is MediaProblem.OVERSIZE
    assert "t-" not in str(err.value)  # never the token


async def test_an_answer_picture_as_an_image_reply(sim: Sim) -> None:
    image = png(seed=9)
    r = ref(MediaKind.IMAGE, image, "image/png")
    await sim.delivery.send_media(chunk("here", [r]), r, image, 0)
    [sent] = await sim.messages()
    assert sent["msgtype"] == "image" and sent["reply_to"] == "om_1"
    assert sent["media"]["sha256"] == hashlib.sha256(image).hexdigest()
    assert sent["media"]["origin"] == "upload"


async def test_a_file_reply(sim: Sim) -> None:
    r = ref(MediaKind.FILE, PDF, "application/pdf", "report.pdf")
    await sim.delivery.send_media(chunk("", [r]), r, PDF, 0)
    [sent] = await sim.messages()
    assert sent["msgtype"] == "file" and sent["media"]["name"] == "report.pdf"
    assert sent["media"]["sha256"] == hashlib.sha256(PDF).hexdigest()


async def test_unstreamed_answer_sends_its_pictures_after_the_text(sim: Sim) -> None:
    image = png(seed=5)
    r = await sim.media.put("out/r1/0", image, kind=MediaKind.IMAGE, name="chart.png", mime="image/png")
    c = chunk("the chart:", [r])
    assert sim.delivery.media_inline
    parts = sim.delivery.render(c)
    for i, part in enumerate(parts):
        await sim.delivery.send(c, part, i)
    sent = await sim.messages()
    assert [m["msgtype"] for m in sent] == ["text", "image"]
    assert sent[1]["media"]["sha256"] == hashlib.sha256(image).hexdigest()


async def test_pictures_only_answer(sim: Sim) -> None:
    image = png(seed=6)
    r = await sim.media.put("out/r1/0", image, kind=MediaKind.IMAGE, name="chart.png", mime="image/png")
    c = chunk("", [r])
    assert sim.delivery.render(c) == [""]
    await sim.delivery.send(c, "", 0)
    assert [m["msgtype"] for m in await sim.messages()] == ["image"]


async def test_streamed_answer_shows_its_pictures_in_the_card(sim: Sim) -> None:
    image = png(seed=7)
    r = await sim.media.put("out/r1/0", image, kind=MediaKind.IMAGE, name="chart.png", mime="image/png")
    bad = await sim.media.put(
        "out/r1/1", b"not a picture", kind=MediaKind.IMAGE, name="x.png", mime="text/plain"
    )
    draft = chunk("the ch", [], seq=0).model_copy(update={"final": False, "full_text": None})
    await sim.delivery.update(draft, "the ch")
    final = chunk("the chart:", [r, bad], seq=1)
    await sim.delivery.send(final, sim.delivery.render(final)[0], 0)
    [card] = await sim.messages()
    assert card["msgtype"] == "interactive" and card["streaming"] is False
    assert [m["sha256"] for m in card["media"]] == [hashlib.sha256(image).hexdigest()]
    assert card["content"].startswith("the chart:") and "could not be shown" in card["content"]


async def test_sim_uploads_are_strict(sim: Sim) -> None:
    token, _ = await sim.delivery._fetch_token()
    auth = {"Authorization": f"Bearer {token}"}

    async def post(path: str, data: dict[str, str], files: dict[str, Any]) -> dict[str, Any]:
        resp = await sim.client.post(f"{API}{path}", data=data, files=files, headers=auth)
        return dict(resp.json())

    image = png()
    assert (await post("/open-apis/im/v1/images", {"image_type": "message"}, {"image": ("a.png", image)}))[
        "code"
    ] == 0
    assert (await post("/open-apis/im/v1/images", {"image_type": "other"}, {"image": ("a.png", image)}))[
        "code"
    ] == 234001
    assert (await post("/open-apis/im/v1/images", {"image_type": "message"}, {"image": ("a.pdf", PDF)}))[
        "code"
    ] == 234011
    assert (await post("/open-apis/im/v1/images", {"image_type": "message"}, {"image": ("a.png", b"")}))[
        "code"
    ] == 234010
    big = b"\x89PNG\r\n\x1a\n" + bytes(10 * 1024 * 1024)
    assert (await post("/open-apis/im/v1/images", {"image_type": "message"}, {"image": ("a.png", big)}))[
        "code"
    ] == 234006
    ok = await post(
        "/open-apis/im/v1/files", {"file_type": "pdf", "file_name": "a.pdf"}, {"file": ("a.pdf", PDF)}
    )
    assert ok["code"] == 0 and ok["data"]["file_key"]
    assert (
        await post("/open-apis/im/v1/files", {"file_type": "exe", "file_name": "a"}, {"file": ("a", PDF)})
    )["code"] == 234001
    assert (await post("/open-apis/im/v1/files", {"file_type": "pdf"}, {"file": ("a.pdf", PDF)}))[
        "code"
    ] == 234001
    resp = await sim.client.post(
        f"{API}/open-apis/im/v1/messages/om_1/reply",
        json={"msg_type": "image", "content": json.dumps({"image_key": "img_unknown"})},
        headers=auth,
    )
    assert resp.json()["code"] == 230001
    unauthorized = await sim.client.post(
        f"{API}/open-apis/im/v1/images", data={"image_type": "message"}, files={"image": ("a.png", image)}
    )
    assert unauthorized.json()["code"] == 99991663


async def test_a_retried_final_shows_the_card_pictures_once(sim: Sim) -> None:
    image = png(seed=8)
    r = await sim.media.put("out/r1/0", image, kind=MediaKind.IMAGE, name="chart.png", mime="image/png")
    draft = chunk("the", [], seq=0).model_copy(update={"final": False, "full_text": None})
    await sim.delivery.update(draft, "the")
    final = chunk("the chart:", [r], seq=1)
    await sim.delivery.send(final, "the chart:", 0)
    await sim.delivery.send(final, "the chart:", 0)  # the sender retried (e.g. an answer lost on the way)
    [card] = await sim.messages()
    assert [m["sha256"] for m in card["media"]] == [hashlib.sha256(image).hexdigest()]
    assert card["streaming"] is False
    uploads = (await sim.client.get(f"{API}/sim/media", params={"origin": "upload"})).json()
    assert len(uploads) == 1  # uploaded once


async def test_a_download_refused_for_the_token_fetches_a_new_one() -> None:
    issued: list[str] = []
    photo = png(seed=11)

    def platform(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/tenant_access_token/internal"):
            issued.append(f"t-{len(issued) + 1}")
            return httpx.Response(200, json={"code": 0, "tenant_access_token": issued[-1], "expire": 7200})
        assert request.url.params["type"] == "image"
        if request.headers["authorization"] == "Bearer t-1":
            return httpx.Response(400, json={"code": 99991663, "msg": "Invalid access token"})
        return httpx.Response(200, content=photo, headers={"content-type": "image/png"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(platform)) as client:
        delivery = FeishuDelivery(
            bot_id="fs",
            platform="feishu",
            app_id=APP_ID,
            app_secret=SECRET,
            api_base=API,
            client=client,
            tokens=TokenCache(FakeKV("tokens")),
            timeout=5,
        )
        att = Attachment(kind="image", ref="img_v3_x")
        got = await delivery.fetch_media(inbound(att), att, Downloader(client, client, Guard(), 1 << 20))
    assert got.data == photo and issued == ["t-1", "t-2"]
