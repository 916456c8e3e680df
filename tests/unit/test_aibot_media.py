"""WeCom AI bot media: messages' pictures, files, videos and voice become attachments; their encrypted
files are downloaded and decrypted; an answer's images ride the finished stream (callback mode) or go up in
512 KB chunks over the socket (long connection), and the simulated gateway holds the upload to WeCom's
rules."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from imrelay.callbacks import CallbackRequest
from imrelay.config import ConnectorConfig
from imrelay.errors import PermanentUpstreamError, TransientUpstreamError
from imrelay.events import Attachment, Chat, ChatType, ConnectionAnswer, ConnectionRequest, ReplyChunk, Sender
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef
from imrelay.media.fetch import Downloader, Guard
from imrelay.platforms.spec import SimMedia
from imrelay.platforms.wecom_aibot import SPEC
from imrelay.platforms.wecom_aibot import sim as sim_aibot
from imrelay.platforms.wecom_aibot.config import WeComAIBot
from imrelay.platforms.wecom_aibot.connection import AIBotConnection
from imrelay.platforms.wecom_aibot.delivery import WeComAIBotDelivery, inline_media, upload_frames
from imrelay.platforms.wecom_aibot.handle import WeComAIBotHandle
from imrelay.platforms.wecom_aibot.ingress import WeComAIBotAdapter, normalize
from imrelay.platforms.wecom_aibot.media import (
    CHUNK_BYTES,
    chunks,
    decrypt_file,
    encrypt_file,
    file_key,
)

from ..helpers import FakeStreamStore
from ..media_files import pdf, png
from .test_aibot_stream_limits import KEY, SETTINGS, Clock, call, serving

AESKEY = base64.b64encode(bytes(range(32))).decode()


def message(msgtype: str, **fields: Any) -> dict[str, Any]:
    return {"msgid": "m1", "msgtype": msgtype, "chattype": "single", "from": {"userid": "alice"}, **fields}


def test_media_messages_become_attachments_with_their_url_and_key() -> None:
    image = normalize(message("image", image={"url": "https://x/i", "aeskey": AESKEY}), "b", 0, "s")
    assert image.text == "" and image.kind == "message"  # a picture alone is still a message
    (att,) = image.attachments
    assert (att.kind, att.ref, att.url, att.key) == ("image", "https://x/i", "https://x/i", AESKEY)
    assert AESKEY not in repr(att)
    file = normalize(message("file", file={"url": "https://x/f"}), "b", 0, "s").attachments[0]
    assert (file.kind, file.url, file.key) == ("file", "https://x/f", None)  # the bot's key decrypts it
    video = normalize(message("video", video={"url": "https://x/v", "aeskey": AESKEY}), "b", 0, "s")
    assert video.attachments[0].kind == "video"
    mixed = normalize(
        message(
            "mixed",
            mixed={
                "msg_item": [
                    {"msgtype": "text", "text": {"content": "what is this"}},
                    {"msgtype": "image", "image": {"url": "https://x/1", "aeskey": AESKEY}},
                    {"msgtype": "image", "image": {"url": "https://x/2"}},
                ]
            },
        ),
        "b",
        0,
        "s",
    )
    assert mixed.text == "what is this"
    assert [(a.kind, a.url) for a in mixed.attachments] == [
        ("image", "https://x/1"),
        ("image", "https://x/2"),
    ]
    voice = normalize(message("voice", voice={"content": "turn on the lights"}), "b", 0, "s")
    assert voice.text == "" and voice.attachments == [
        Attachment(kind="voice", ref="", transcript="turn on the lights")
    ]


def test_the_platform_declares_its_media() -> None:
    assert SPEC.media.inbound == {MediaKind.IMAGE, MediaKind.FILE, MediaKind.VOICE, MediaKind.VIDEO}
    assert SPEC.media.outbound == {MediaKind.IMAGE}
    assert SPEC.media.limits[MediaKind.IMAGE] == 10 * 1024 * 1024


def test_files_decrypt_with_the_message_key_or_the_bot_key() -> None:
    data = pdf()
    key = file_key(AESKEY, KEY)
    assert key == bytes(range(32)) and file_key(None, KEY) == base64.b64decode(KEY + "=")
    sealed = encrypt_file(data, key)
    assert len(sealed) % 32 == 0 and decrypt_file(sealed, key) == data
    with pytest.raises(MediaError) as err:
        decrypt_file(sealed, file_key(None, KEY))  # the wrong key: the padding does not hold
    assert err.value.problem is MediaProblem.DOWNLOAD_FAILED
    with pytest.raises(MediaError):
        file_key("bm90IGEga2V5", KEY)


def test_the_upload_is_cut_in_512_kb_chunks_in_order() -> None:
    data = png(noise=CHUNK_BYTES * 2)
    frames = upload_frames(data, "chart.png", upload="u1", req_id="rq", chatid="alice")
    init, *middle, finish = frames
    assert init.op == "upload_init" and init.body["total_size"] == len(data)
    assert init.body["total_chunks"] == 3 == len(middle)
    assert init.body["md5"] == hashlib.md5(data).hexdigest()  # noqa: S324
    assert [f.body["chunk_index"] for f in middle] == [0, 1, 2]
    assert b"".join(base64.b64decode(f.body["base64_data"]) for f in middle) == data
    assert all(len(base64.b64decode(f.body["base64_data"])) <= CHUNK_BYTES for f in middle)
    assert (finish.op, finish.req_id, finish.chatid) == ("upload_finish", "rq", "alice")
    assert len(chunks(b"x" * CHUNK_BYTES * 100)) == 100
    with pytest.raises(MediaError) as err:
        chunks(b"x" * (CHUNK_BYTES * 100 + 1))
    assert err.value.problem is MediaProblem.OVERSIZE


def ref(mime: str = "image/png", size: int = 10, kind: MediaKind = MediaKind.IMAGE) -> MediaRef:
    return MediaRef(kind=kind, key=f"out/r/{size}", name="", size=size, sha256="0" * 64, mime=mime)


def final_chunk(handle: WeComAIBotHandle, media: list[MediaRef] | None = None) -> ReplyChunk:
    return ReplyChunk(
        reply_id="r1",
        inbound_id="r1",
        platform="wecom_aibot",
        bot_id="ws",
        chat=Chat(id="alice", type=ChatType.DIRECT),
        recipient=Sender(id="alice"),
        seq=0,
        reply_handle=handle,
        full_text="here it is",
        final=True,
        media=media or [],
    )


def test_callback_mode_shows_jpg_and_png_up_to_ten_and_names_the_rest() -> None:
    shown, lines = inline_media(
        [ref(), ref("image/gif"), ref(size=11 * 1024 * 1024), *[ref(size=i) for i in range(20, 30)]]
    )
    assert len(shown) == 10 and shown[0] == ref()
    assert len(lines) == 2 and all(line.startswith("(A picture in this answer") for line in lines)


async def test_callback_mode_the_finished_stream_names_the_images_and_the_poll_answer_carries_them() -> None:
    store = FakeStreamStore()
    delivery = WeComAIBotDelivery(bot_id="cb", streams=store, client=httpx.AsyncClient(), timeout=1.0)
    assert delivery.media_inline
    picture = ref(size=len(png()))
    chunk = final_chunk(WeComAIBotHandle(stream_id="sid"), [picture, ref("image/gif")])
    await delivery.send(chunk, delivery.render(chunk)[0], 0)
    record = store.records[("cb", "sid")]
    assert record.finish and record.media == (picture,)
    assert record.content.startswith("here it is\n\n(A picture in this answer could not be shown")

    bot = WeComAIBot.model_validate(
        {"id": "cb", "platform": "wecom_aibot", "credentials": {"token": "t", "encoding_aes_key": KEY}}
    )
    adapter = WeComAIBotAdapter.from_bot(bot)
    request = CallbackRequest(
        method="POST", query={"timestamp": "1", "nonce": "2"}, headers={}, body=b"", now=1
    )
    reply = sim_aibot.read_reply(bot, adapter.poll_reply(request, "sid", record, [(picture, png())]))
    (item,) = reply["stream"]["msg_item"]
    assert base64.b64decode(item["image"]["base64"]) == png()
    assert item["image"]["md5"] == hashlib.md5(png()).hexdigest()  # noqa: S324
    unfinished = sim_aibot.read_reply(
        bot, adapter.poll_reply(request, "sid", record.__class__("so far", False, 0.0), [(picture, png())])
    )
    assert "msg_item" not in unfinished["stream"]


@contextlib.asynccontextmanager
async def socket_for(
    host: str,
) -> AsyncIterator[tuple[AIBotConnection, list[dict[str, Any]]]]:
    """A bot's connection on the simulated gateway, subscribed; yields it and the frames pushed to it."""
    bot = SETTINGS.bot("ws")
    assert isinstance(bot, WeComAIBot)
    sock = AIBotConnection(bot, ConnectorConfig(ack_timeout_seconds=5))
    pushed: list[dict[str, Any]] = []
    async with connect(f"ws://{host}/ws/aibot", max_size=4 * 1024 * 1024) as ws:
        sock.ws = ws

        async def read() -> None:
            async for raw in ws:
                frame = json.loads(raw)
                if "cmd" in frame:
                    pushed.append(frame)
                else:
                    sock._resolve(frame)

        reader = asyncio.create_task(read())
        try:
            assert (await sock.request("aibot_subscribe", {"bot_id": "aib1", "secret": "s"}))["errcode"] == 0
            yield sock, pushed
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def next_push(pushed: list[dict[str, Any]]) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while not pushed:  # noqa: ASYNC110 - polling the reader's record
            await asyncio.sleep(0.02)
    return pushed.pop(0)


async def test_long_connection_an_image_goes_up_in_chunks_and_is_shown_on_the_message() -> None:
    data = png(noise=CHUNK_BYTES * 2 + 1000)
    async with (
        serving(Clock()) as host,
        httpx.AsyncClient(base_url=f"http://{host}") as client,
        socket_for(host) as (sock, pushed),
    ):
        rid = (await client.post("/sim/aibot/push", json={"bot_id": "aib1", "text": "draw"})).json()["req_id"]
        await next_push(pushed)
        sent: list[dict[str, Any]] = []

        async def requester(req: ConnectionRequest) -> ConnectionAnswer:
            sent.append(req.payload)
            return await sock.send(req.payload)

        delivery = WeComAIBotDelivery(
            bot_id="ws", streams=FakeStreamStore(), client=client, timeout=5, requester=requester
        )
        assert not delivery.media_inline
        handle = WeComAIBotHandle(stream_id="sid", mode="long_connection", req_id=rid, chatid="alice")
        picture = MediaRef(
            kind=MediaKind.IMAGE,
            key="out/r1/0",
            name="chart.png",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            mime="image/png",
        )
        await delivery.send_media(final_chunk(handle), picture, data, 1)
        assert [p["op"] for p in sent] == ["upload_init", *["upload_chunk"] * 3, "upload_finish"]
        assert all(len(json.dumps(p)) < 1024 * 1024 for p in sent)  # each fits in one NATS message
        (shown,) = [m for m in (await client.get("/sim/messages", params={"bot": "ws"})).json()]
        assert (
            shown["msgtype"] == "image" and shown["req_id"] == rid and shown["content"] == "[image chart.png]"
        )
        assert shown["media"]["sha256"] == picture.sha256 and shown["media"]["origin"] == "upload"

        with pytest.raises(MediaError) as err:  # WeCom shows JPG and PNG only
            await delivery.send_media(final_chunk(handle), ref("image/gif"), b"GIF89a", 2)
        assert err.value.problem is MediaProblem.UNSUPPORTED


async def test_the_simulated_gateway_holds_uploads_to_the_rules() -> None:
    data = png(noise=CHUNK_BYTES + 10)
    md5 = hashlib.md5(data).hexdigest()  # noqa: S324

    async def init(ws: Any, rid: str, **over: Any) -> tuple[int, str]:
        body = {"type": "image", "filename": "a.png", "total_size": len(data), "total_chunks": 2, "md5": md5}
        await ws.send(
            json.dumps(
                {"cmd": "aibot_upload_media_init", "headers": {"req_id": rid}, "body": {**body, **over}}
            )
        )
        ack = json.loads(await ws.recv())
        return ack["errcode"], (ack.get("body") or {}).get("upload_id", "")

    def piece(upload_id: str, index: int, raw: bytes) -> dict[str, Any]:
        return {"upload_id": upload_id, "chunk_index": index, "base64_data": base64.b64encode(raw).decode()}

    async with serving(Clock()) as host, connect(f"ws://{host}/ws/aibot", max_size=4 * 1024 * 1024) as ws:
        assert await call(ws, "aibot_subscribe", "sub", {"bot_id": "aib1", "secret": "s"}) == 0
        assert (await init(ws, "i1", type="gif"))[0] == 40005
        assert (await init(ws, "i2", total_size=11 * 1024 * 1024, total_chunks=22))[0] == 40009
        assert (await init(ws, "i3", total_chunks=3))[0] == 40058  # does not match the size
        code, up = await init(ws, "i5")
        assert code == 0 and up
        head, tail = data[:CHUNK_BYTES], data[CHUNK_BYTES:]
        assert await call(ws, "aibot_upload_media_chunk", "c1", piece(up, 1, tail)) == 40058  # out of order
        assert (
            await call(ws, "aibot_upload_media_chunk", "c2", piece(up, 0, head + b"x")) == 40009
        )  # > 512 KB
        assert await call(ws, "aibot_upload_media_chunk", "c3", piece(up, 0, head)) == 0
        assert (
            await call(ws, "aibot_upload_media_finish", "f1", {"upload_id": up}) == 40058
        )  # a chunk missing
        _, up = await init(ws, "i6", md5="0" * 32)
        assert await call(ws, "aibot_upload_media_chunk", "c4", piece(up, 0, head)) == 0
        assert await call(ws, "aibot_upload_media_chunk", "c5", piece(up, 1, tail)) == 0
        assert await call(ws, "aibot_upload_media_finish", "f2", {"upload_id": up}) == 301019  # md5
        # an image reply must name a media_id this bot uploaded
        assert (
            await call(
                ws, "aibot_send_msg", "s1", {"chatid": "a", "msgtype": "image", "image": {"media_id": "x"}}
            )
            == 40007
        )


async def test_a_pushed_picture_is_fetched_and_decrypted_byte_exact() -> None:
    data = png(32, 32)
    async with (
        serving(Clock()) as host,
        httpx.AsyncClient(base_url=f"http://{host}") as client,
        socket_for(host) as (_, pushed),
    ):
        item = (
            await client.post("/sim/media", params={"name": "p.png", "kind": "image"}, content=data)
        ).json()
        media = SimMedia(
            **{k: item[k] for k in ("id", "name", "size", "sha256", "md5", "mime")}, kind="image"
        )
        body = {
            "bot_id": "aib1",
            "text": "",
            "media": [
                media.__dict__
                if hasattr(media, "__dict__")
                else {f: getattr(media, f) for f in media.__dataclass_fields__}
            ],
        }
        assert (await client.post("/sim/aibot/push", json=body)).status_code == 200
        frame = await next_push(pushed)
        inbound = normalize(frame["body"], "ws", 0, "sid", req_id=frame["headers"]["req_id"])
        (att,) = inbound.attachments
        assert att.kind == "image" and att.key
        delivery = WeComAIBotDelivery(
            bot_id="ws", streams=FakeStreamStore(), client=client, timeout=5, aes_key=KEY
        )
        async with httpx.AsyncClient() as direct:
            download = Downloader(client, direct, Guard(["127.0.0.0/8"]), limit=1024 * 1024)
            fetched = await delivery.fetch_media(inbound, att, download)
            assert fetched.data == data and fetched.filename == "p.png"
            with pytest.raises(MediaError) as err:  # the decrypted size counts against the limit
                await delivery.fetch_media(inbound, att, download.with_limit(len(data) - 1))
            assert err.value.problem is MediaProblem.OVERSIZE
            gone = att.model_copy(update={"url": (att.url or "").replace("nonce=", "nonce=x")})
            with pytest.raises(MediaError) as err:  # another key: not the file
                await delivery.fetch_media(inbound, gone, download)
            assert err.value.problem is MediaProblem.DOWNLOAD_FAILED


async def test_the_ingress_reads_a_finished_streams_images_and_leaves_out_one_it_cannot_read() -> None:
    from imrelay.answer_streams import StreamRecord
    from imrelay_ingress.app import _stream_images

    kept, lost = ref(size=1), ref(size=2)

    class Bucket:
        async def get(self, r: MediaRef) -> bytes:
            if r == lost:
                raise ValueError("expired")
            return b"png"

    record = StreamRecord("done", True, 0.0, (kept, lost))
    assert await _stream_images(Bucket(), "cb", record) == [(kept, b"png")]
    assert await _stream_images(Bucket(), "cb", StreamRecord("so far", False, 0.0, (kept,))) == []
    assert await _stream_images(None, "cb", record) == []


class UploadGateway:
    """Stands in for the socket: acks uploads with their ids, and refuses the reply on the message's req_id
    with ``reply_code`` (846605: that message came on a socket that is gone)."""

    def __init__(self, sock: AIBotConnection, reply_code: int) -> None:
        self.sock, self.reply_code, self.frames = sock, reply_code, list[dict[str, Any]]()

    async def send(self, raw: str) -> None:
        frame = json.loads(raw)
        self.frames.append(frame)
        ack: dict[str, Any] = {"headers": frame["headers"], "errcode": 0}
        if frame["cmd"] == "aibot_upload_media_init":
            ack["body"] = {"upload_id": "up1"}
        elif frame["cmd"] == "aibot_upload_media_finish":
            ack["body"] = {"type": "image", "media_id": "m1", "created_at": 1}
        elif frame["cmd"] == "aibot_respond_msg":
            ack["errcode"] = self.reply_code
        self.sock._resolve(ack)


@pytest.mark.parametrize("reply_code", [0, 846605])
async def test_the_connector_replies_with_the_image_or_sends_it_to_the_chat(reply_code: int) -> None:
    bot = SETTINGS.bot("ws")
    assert isinstance(bot, WeComAIBot)
    sock = AIBotConnection(bot, ConnectorConfig(ack_timeout_seconds=1))
    gateway = UploadGateway(sock, reply_code)
    sock.ws = gateway  # type: ignore[assignment]
    frames = upload_frames(png(), "a.png", upload="u", req_id="rq", chatid="alice")
    answers = [await sock.send(f.model_dump()) for f in frames]
    assert all(a.ok for a in answers)
    cmds = [f["cmd"] for f in gateway.frames]
    assert cmds[:3] == ["aibot_upload_media_init", "aibot_upload_media_chunk", "aibot_upload_media_finish"]
    assert gateway.frames[1]["body"]["upload_id"] == "up1"
    reply = gateway.frames[3]
    assert reply["cmd"] == "aibot_respond_msg" and reply["headers"]["req_id"] == "rq"
    assert reply["body"] == {"msgtype": "image", "image": {"media_id": "m1"}}
    if reply_code:
        assert gateway.frames[4]["cmd"] == "aibot_send_msg"
        assert gateway.frames[4]["body"] == {
            "chatid": "alice",
            "msgtype": "image",
            "image": {"media_id": "m1"},
        }
    else:
        assert len(gateway.frames) == 4
    # an upload this socket does not know (begun on an earlier one) is refused: the sender starts again
    late = await sock.send(frames[1].model_dump())
    assert not late.ok and late.code == "unknown_upload"


@pytest.mark.parametrize(
    ("code", "error"), [(40009, PermanentUpstreamError), ("unknown_upload", TransientUpstreamError)]
)
async def test_a_refused_upload_is_permanent_and_a_lost_one_is_tried_again(
    code: int | str, error: type[Exception]
) -> None:
    async def requester(req: ConnectionRequest) -> ConnectionAnswer:
        return ConnectionAnswer(ok=False, code=code)

    delivery = WeComAIBotDelivery(
        bot_id="ws", streams=None, client=httpx.AsyncClient(), timeout=1, requester=requester
    )
    handle = WeComAIBotHandle(stream_id="sid", mode="long_connection", req_id="rq")
    with pytest.raises(error):
        await delivery.send_media(final_chunk(handle), ref(size=len(png())), png(), 1)
