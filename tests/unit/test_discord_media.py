"""Discord media: attachments of ``/ask`` and of Gateway messages become attachments; the delivery
downloads them from their signed URLs and sends an answer's images as multipart files (a follow-up of
the interaction, or a reply in the channel); the simulator plays the CDN and the uploads as strictly as
Discord."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from imrelay.callbacks import CallbackRequest
from imrelay.config import Settings, parse_settings
from imrelay.events import Attachment, Chat, ChatType, InboundMessage, ReplyChunk, Sender
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef
from imrelay.media.fetch import Downloader, Guard
from imrelay.platforms import spec_for
from imrelay.platforms.discord import gateway as gw
from imrelay.platforms.discord import media as dm
from imrelay.platforms.discord.config import DiscordBot
from imrelay.platforms.discord.delivery import DiscordDelivery
from imrelay.platforms.discord.handle import DiscordHandle
from imrelay.platforms.discord.ingress import DiscordAdapter, normalize
from imrelay.platforms.discord.sim import attachment_url, callback, public_key_for, url_valid
from imrelay.platforms.spec import SimMedia
from imrelay_sim.server import create_app
from tests.fakes import FakeKV
from tests.media_files import pdf, png

API = "http://127.0.0.1:8999"  # a literal address: the guard lets the simulator's through
SEED = secrets.token_hex(32)
APP = "5550001"
TOKEN = "media-bot-token"
MB = 1024 * 1024


def settings() -> Settings:
    return parse_settings(
        {
            "bots": [
                {
                    "id": "dc",
                    "platform": "discord",
                    "api_base": API,
                    "credentials": {
                        "application_id": APP,
                        "public_key": public_key_for(SEED),
                        "bot_token": TOKEN,
                    },
                }
            ]
        },
        {},
    )


def bot() -> DiscordBot:
    [b] = settings().bots
    assert isinstance(b, DiscordBot)
    return b


def resolved(att_id: str, **more: Any) -> dict[str, Any]:
    return {
        "id": att_id,
        "filename": "photo.png",
        "size": 1234,
        "url": f"https://cdn.discordapp.com/attachments/1/{att_id}/photo.png?ex=1&is=0&hm=ab",
        "proxy_url": f"https://media.discordapp.net/attachments/1/{att_id}/photo.png",
        "content_type": "image/png",
    } | more


def interaction(options: list[dict[str, Any]], attachments: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "id": "i1",
        "token": "aW50ZXJhY3Rpb24tok",
        "application_id": APP,
        "type": 2,
        "channel_id": "c1",
        "guild_id": "g1",
        "member": {"user": {"id": "u1", "username": "alice"}},
        "data": {"name": "ask", "options": options, "resolved": {"attachments": attachments}},
    } | more


# ---- inbound ------------------------------------------------------------------------------------------


def test_ask_with_an_attachment_option() -> None:
    payload = interaction(
        [{"name": "q", "type": 3, "value": "what is this?"}, {"name": "file", "type": 11, "value": "a1"}],
        {"a1": resolved("a1")},
        attachment_size_limit=10 * MB,
    )
    msg = normalize(payload, "dc", 1.0)
    assert msg.text == "what is this?"  # the attachment's id is not text
    [att] = msg.attachments
    assert (att.kind, att.name, att.size, att.mime) == ("image", "photo.png", 1234, "image/png")
    assert att.ref == att.url == resolved("a1")["url"]
    assert isinstance(msg.reply_handle, DiscordHandle)
    assert msg.reply_handle.attachment_size_limit == 10 * MB


def test_ask_with_attachments_alone() -> None:
    payload = interaction(
        [{"name": "file", "type": 11, "value": "a1"}, {"name": "file2", "type": 11, "value": "a2"}],
        {
            "a1": resolved("a1", filename="report.pdf", content_type="application/pdf", size=99),
            "a2": resolved("a2", filename="clip.mp4", content_type="video/mp4"),
            "a3": resolved("a3"),  # resolved but not an option of this command: not the user's
        },
    )
    msg = normalize(payload, "dc", 1.0)
    assert msg.text == ""
    assert [(a.kind, a.name) for a in msg.attachments] == [("file", "report.pdf"), ("video", "clip.mp4")]
    assert isinstance(msg.reply_handle, DiscordHandle) and msg.reply_handle.attachment_size_limit == 0


def test_an_attachment_option_that_resolves_to_nothing_is_skipped() -> None:
    payload = interaction([{"name": "file", "type": 11, "value": "zz"}], {})
    assert normalize(payload, "dc", 1.0).attachments == []


@pytest.mark.parametrize(
    "data",
    [
        {"options": "x", "resolved": []},
        {"options": [{"type": 11, "value": "a"}], "resolved": {"attachments": "nope"}},
        {"options": [{"type": 11, "value": "a"}], "resolved": {"attachments": {"a": {"url": 5}}}},
        {"options": [7, None, {"type": 11, "options": "x"}]},
    ],
)
def test_malformed_attachment_options_are_ignored(data: dict[str, Any]) -> None:
    assert dm.from_command(data) == []


@pytest.mark.parametrize("attachments", [None, "x", 5, {"a": 1}, [None, 3, {"url": ["x"]}]])
def test_malformed_message_attachments_are_ignored(attachments: Any) -> None:
    assert dm.from_message({"attachments": attachments, "flags": "x"}) == []


@pytest.mark.parametrize(
    ("raw", "flags", "kind"),
    [
        ({"content_type": "image/webp"}, 0, MediaKind.IMAGE),
        ({"content_type": "video/quicktime"}, 0, MediaKind.VIDEO),
        ({"content_type": "audio/ogg", "duration_secs": 3.2, "waveform": "AAA="}, 8192, MediaKind.VOICE),
        ({"content_type": "audio/mpeg"}, 0, MediaKind.FILE),  # a song sent as a file
        ({"content_type": "application/pdf"}, 0, MediaKind.FILE),
        ({}, 0, MediaKind.FILE),
    ],
)
def test_attachment_kinds(raw: dict[str, Any], flags: int, kind: MediaKind) -> None:
    assert dm.kind_of(raw, flags) is kind


def test_gateway_messages_carry_attachments() -> None:
    message = {
        "id": "m1",
        "channel_id": "c1",
        "guild_id": "g1",
        "author": {"id": "u1", "username": "alice"},
        "content": "<@42>",
        "mentions": [{"id": "42"}],
        "attachments": [resolved("a1"), {"id": "a2", "filename": "x"}],  # the second has no URL
    }
    assert gw.for_bot(message, "42")
    msg = gw.normalize(message, "dc", APP, "42", 1.0)
    assert msg.text == ""  # a picture alone, mentioning the bot
    assert [(a.kind, a.size) for a in msg.attachments] == [("image", 1234)]
    voice = {**message, "flags": 8192, "attachments": [resolved("v", content_type="audio/ogg")]}
    assert gw.normalize(voice, "dc", APP, "42", 1.0).attachments[0].kind == "voice"


def test_simulated_interactions_carry_media_the_discord_way() -> None:
    media = (
        SimMedia("image", "simimg1", "p.png", 70, "s" * 64, "m" * 32, "image/png"),
        SimMedia("file", "simdoc1", "r.pdf", 300, "t" * 64, "n" * 32, "application/pdf"),
    )
    headers, body = callback(bot(), "", "alice", "c9", "77", "aW50ZXJhY3Rpb24x", 1000.0, SEED, media=media)
    payload = json.loads(body)
    assert [o["type"] for o in payload["data"]["options"]] == [11, 11]
    assert payload["attachment_size_limit"] == dm.UPLOAD_LIMIT
    lower = {k.lower(): v for k, v in headers.items()}
    result = DiscordAdapter.from_bot(bot()).handle(CallbackRequest("POST", {}, lower, body, now=1000.0))
    assert result.message is not None
    got = result.message.attachments
    assert [(a.kind, a.name, a.size) for a in got] == [("image", "p.png", 70), ("file", "r.pdf", 300)]
    assert got[0].url is not None and "/discord-cdn/attachments/c9/simimg1/p.png?ex=" in got[0].url


def test_cdn_urls_are_signed_and_expire() -> None:
    url = httpx.URL(attachment_url("http://sim", "c1", "id1", "a b.png", 1000.0))
    query = dict(url.params)
    assert url.path == "/discord-cdn/attachments/c1/id1/a b.png"
    path = url.raw_path.decode().split("?", 1)[0]
    assert url_valid(path, query, 1001.0)
    assert not url_valid(path, query, 1000.0 + 24 * 3600)  # expired
    assert not url_valid(path, query | {"hm": "0" * 64}, 1001.0)
    assert not url_valid(path.replace("id1", "id2"), query, 1001.0)


def test_spec_declares_media() -> None:
    media = spec_for(bot()).media
    assert media.inbound == {MediaKind.IMAGE, MediaKind.FILE, MediaKind.VOICE, MediaKind.VIDEO}
    assert media.outbound == {MediaKind.IMAGE}  # answers carry images
    assert media.limits == {MediaKind.IMAGE: 20 * MB} and media.note


# ---- uploads, pure ------------------------------------------------------------------------------------


def ref(kind: MediaKind, data: bytes, mime: str, name: str = "chart.png") -> MediaRef:
    return MediaRef(
        kind=kind, key="k", name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest(), mime=mime
    )


def test_outbound_checks() -> None:
    dm.upload_check(ref(MediaKind.IMAGE, b"x", "image/png"), 20 * MB)
    dm.upload_check(ref(MediaKind.FILE, b"x", "application/pdf", "r.pdf"), 1)
    for bad, problem in [
        (ref(MediaKind.IMAGE, b"x", "image/bmp"), MediaProblem.UNSUPPORTED),  # not shown as an image
        (ref(MediaKind.VOICE, b"x", "audio/ogg"), MediaProblem.UNSUPPORTED),
    ]:
        with pytest.raises(MediaError) as err:
            dm.upload_check(bad, 1)
        assert err.value.problem is problem
    with pytest.raises(MediaError) as err:
        dm.upload_check(ref(MediaKind.IMAGE, b"x", "image/png"), 20 * MB + 1)
    assert err.value.problem is MediaProblem.OVERSIZE
    with pytest.raises(MediaError):
        dm.upload_check(ref(MediaKind.IMAGE, b"x", "image/png"), 11, limit=10)


@pytest.mark.parametrize(
    ("name", "mime", "want"),
    [
        ("chart.png", "image/png", "chart.png"),
        ("chart", "image/png", "chart.png"),
        ("image-1.bin", "image/jpeg", "image-1.jpg"),
        ("photo.jpeg", "image/jpeg", "photo.jpeg"),
        ("a/b.pdf", "application/pdf", "a_b.pdf"),
        ("", "image/gif", "image.gif"),
    ],
)
def test_uploaded_names_end_with_their_type(name: str, mime: str, want: str) -> None:
    kind = MediaKind.IMAGE if mime.startswith("image/") else MediaKind.FILE
    assert dm.filename(ref(kind, b"x", mime, name)) == want


def test_multipart_names_the_file() -> None:
    form, files = dm.multipart({"nonce": "n"}, ref(MediaKind.IMAGE, b"PNG", "image/png", "c"), b"PNG")
    assert json.loads(form["payload_json"]) == {"nonce": "n", "attachments": [{"id": 0, "filename": "c.png"}]}
    assert files == {"files[0]": ("c.png", b"PNG", "image/png")}


# ---- the delivery against the simulated API -----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sim:
    client: httpx.AsyncClient
    delivery: DiscordDelivery
    clock: Clock

    async def user_file(self, data: bytes, name: str, kind: str) -> SimMedia:
        resp = await self.client.post(f"{API}/sim/media", params={"name": name, "kind": kind}, content=data)
        d = resp.json()
        return SimMedia(kind, d["id"], name, d["size"], d["sha256"], d["md5"], d["mime"])

    async def messages(self) -> list[dict[str, Any]]:
        return list((await self.client.get(f"{API}/sim/messages", params={"bot": "dc"})).json())

    def download(self, limit: int = 100 * MB) -> Downloader:
        return Downloader(self.client, self.client, Guard(["127.0.0.0/8"]), limit)


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    clock = Clock()
    app = create_app(settings(), clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=30) as client:
        delivery = DiscordDelivery(
            bot_id="dc",
            application_id=APP,
            api_base=API,
            client=client,
            timeout=30,
            bot_token=TOKEN,
            streams=FakeKV("deliveries"),
        )
        yield Sim(client, delivery, clock)


def inbound(attachment: Attachment) -> InboundMessage:
    return InboundMessage(
        id="in1",
        platform="discord",
        bot_id="dc",
        platform_message_id="discord:interaction:i1",
        chat=Chat(id="c1", type=ChatType.GROUP),
        sender=Sender(id="u1"),
        attachments=[attachment],
        reply_handle=DiscordHandle(application_id=APP, interaction_token="aW50ZXJhY3Rpb24tok"),
    )


def chunk(handle: DiscordHandle, media: list[MediaRef], reply_id: str = "r1") -> ReplyChunk:
    from datetime import UTC, datetime

    return ReplyChunk(
        reply_id=reply_id,
        inbound_id="in1",
        platform="discord",
        bot_id="dc",
        chat=Chat(id="c1", type=ChatType.GROUP),
        recipient=Sender(id="u1"),
        reply_handle=handle,
        seq=0,
        final=True,
        full_text="here",
        media=media,
        received_at=datetime.now(UTC),
    )


INTERACTION = DiscordHandle(application_id=APP, interaction_token="aW50ZXJhY3Rpb24tok")
CHANNEL = DiscordHandle(application_id=APP, channel_id="c1", message_id="m1", guild_id="g1")


def attachment_of(m: SimMedia, sim: Sim) -> Attachment:
    url = attachment_url(API, "c1", m.id, m.name, sim.clock.now)
    return Attachment(kind=m.kind, ref=url, url=url, name=m.name, size=m.size, mime=m.mime)


async def test_fetches_attachments_byte_exact(sim: Sim) -> None:
    image, doc = png(3, 3), pdf("discord unit")
    for data, name, kind in [(image, "p.png", "image"), (doc, "r.pdf", "file")]:
        att = attachment_of(await sim.user_file(data, name, kind), sim)
        assert (await sim.delivery.fetch_media(inbound(att), att, sim.download())).data == data


async def test_download_refusals(sim: Sim) -> None:
    m = await sim.user_file(png(2, 2), "p.png", "image")
    att = attachment_of(m, sim)
    tampered = att.model_copy(update={"url": str(att.url).replace("hm=", "hm=0"), "ref": ""})
    with pytest.raises(MediaError) as err:
        await sim.delivery.fetch_media(inbound(tampered), tampered, sim.download())
    assert (err.value.problem, err.value.detail) == (MediaProblem.DOWNLOAD_FAILED, "HTTP 404")
    with pytest.raises(MediaError) as err:
        await sim.delivery.fetch_media(inbound(att), att, sim.download(limit=10))
    assert err.value.problem is MediaProblem.OVERSIZE
    sim.clock.now += 24 * 3600  # Discord's URLs expire
    with pytest.raises(MediaError) as err:
        await sim.delivery.fetch_media(inbound(att), att, sim.download())
    assert err.value.detail == "HTTP 404"
    outside = Attachment(kind="image", ref="http://169.254.169.254/latest", url="http://169.254.169.254/x")
    with pytest.raises(MediaError) as err:
        await sim.delivery.fetch_media(inbound(outside), outside, sim.download())
    assert err.value.problem is MediaProblem.BLOCKED


async def test_an_answer_image_as_an_interaction_follow_up(sim: Sim) -> None:
    image = png(4, 4)
    r = ref(MediaKind.IMAGE, image, "image/png", "chart")
    await sim.delivery.send_media(chunk(INTERACTION, [r]), r, image, 1)
    [shown] = await sim.messages()
    assert shown["kind"] == "followup" and shown["token"] == INTERACTION.interaction_token
    assert shown["msgtype"] == "image" and shown["content"] == "[image chart.png]"
    assert shown["media"]["sha256"] == hashlib.sha256(image).hexdigest()
    assert shown["media"]["origin"] == "upload"


async def test_an_answer_image_as_a_channel_reply_once(sim: Sim) -> None:
    image = png(5, 5)
    r = ref(MediaKind.IMAGE, image, "image/png")
    c = chunk(CHANNEL, [r])
    await sim.delivery.send_media(c, r, image, 1)
    await sim.delivery.send_media(c, r, image, 1)  # a retry after a lost answer: the same nonce
    [shown] = await sim.messages()
    assert (shown["via"], shown["chat"], shown["reply_to"]) == ("gateway", "c1", "m1")
    assert shown["media"]["sha256"] == hashlib.sha256(image).hexdigest()


async def test_limits_before_and_at_the_upload(sim: Sim) -> None:
    image = png(2, 2)
    r = ref(MediaKind.IMAGE, image, "image/png")
    small = INTERACTION.model_copy(update={"attachment_size_limit": 10})
    with pytest.raises(MediaError) as err:
        await sim.delivery.send_media(chunk(small, [r]), r, image, 1)
    assert err.value.problem is MediaProblem.OVERSIZE
    # an interaction that allows more than the simulator takes: Discord's 413 / 40005 is "too large"
    big = png(noise=20 * MB + 10)
    rb = ref(MediaKind.IMAGE, big, "image/png")
    generous = INTERACTION.model_copy(update={"attachment_size_limit": 50 * MB})
    with pytest.raises(MediaError) as err:
        await sim.delivery.send_media(chunk(generous, [rb]), rb, big, 1)
    assert (err.value.problem, err.value.detail) == (MediaProblem.OVERSIZE, "40005")
    assert await sim.messages() == []


async def test_sim_uploads_are_strict(sim: Sim) -> None:
    url = f"{API}/api/v10/webhooks/{APP}/aW50ZXJhY3Rpb24tok"

    async def send(payload: str, files: dict[str, Any]) -> httpx.Response:
        return await sim.client.post(url, data={"payload_json": payload}, files=files)

    pic = ("a.png", png(2, 2), "image/png")
    ok = json.dumps({"attachments": [{"id": 0, "filename": "a.png"}]})
    assert (await send(ok, {"files[0]": pic})).status_code == 200
    resp = await send("{not json", {"files[0]": pic})
    assert (resp.status_code, resp.json()["code"]) == (400, 50109)
    resp = await send(json.dumps({"attachments": [{"id": 1, "filename": "a.png"}]}), {"files[0]": pic})
    assert (resp.status_code, resp.json()["code"]) == (400, 50035)  # an entry without its file
    resp = await send(json.dumps({}), {"files[0]": pic})
    assert (resp.status_code, resp.json()["code"]) == (400, 50035)  # a file no entry names
    many = {f"files[{n}]": pic for n in range(11)}
    entries = json.dumps({"attachments": [{"id": n, "filename": "a.png"} for n in range(11)]})
    assert (await send(entries, many)).json()["code"] == 50035
    huge = ("h.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (20 * MB), "image/png")
    resp = await send(ok, {"files[0]": huge})
    assert (resp.status_code, resp.json()) == (413, {"message": "Request entity too large", "code": 40005})
    empty = await sim.client.post(url, json={"content": ""})
    assert empty.json()["code"] == 50006
    assert len(await sim.messages()) == 1
