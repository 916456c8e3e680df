"""WeCom media for the self-built app and the group robot: image, voice, video, file and mixed messages
become attachments; the app's downloads go through ``media/get`` in ranges, the robot's pictures by URL;
an answer's image is uploaded and sent (the app's ``media/upload`` + ``message/send``; the robot's inline
base64 + md5, or ``webhook/upload_media`` as a file when larger); the simulator refuses what WeCom
refuses."""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from imrelay.config import parse_settings
from imrelay.delivery import MediaSink, MediaSource
from imrelay.delivery.tokens import TokenCache, TokenRecord
from imrelay.errors import TokenExpiredError
from imrelay.events import Chat, ChatType, InboundMessage, ReplyChunk, Sender
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef
from imrelay.media.fetch import Downloader, Fetched, Guard
from imrelay.media.simstore import put
from imrelay.platforms import spec as spec_for_platform
from imrelay.platforms.spec import SimMedia, SimMessage
from imrelay.platforms.wecom import media as wmedia
from imrelay.platforms.wecom.callbacks import decrypt_post, parse_xml
from imrelay.platforms.wecom.crypto import crypto_for
from imrelay.platforms.wecom.sim import app_media_xml, robot_media_xml
from imrelay.platforms.wecom_app.config import WeComAppBot
from imrelay.platforms.wecom_app.delivery import WeComAppDelivery, media_body
from imrelay.platforms.wecom_app.handle import WeComAppHandle
from imrelay.platforms.wecom_app.ingress import normalize as app_normalize
from imrelay.platforms.wecom_app.sim import routes as app_sim_routes
from imrelay.platforms.wecom_group_robot.config import WeComGroupRobotBot
from imrelay.platforms.wecom_group_robot.delivery import (
    WeComGroupRobotDelivery,
    image_body,
    upload_url,
)
from imrelay.platforms.wecom_group_robot.handle import WeComGroupRobotHandle
from imrelay.platforms.wecom_group_robot.ingress import normalize as robot_normalize
from imrelay.platforms.wecom_group_robot.sim import routes as robot_sim_routes
from imrelay_sim.media import routes as store_routes
from imrelay_sim.server import SimState
from tests.fakes import FakeKV
from tests.media_files import pdf, png

SIM = "http://127.0.0.1:8090"
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
CORP, AGENT, SECRET = "wwmedia", "1000002", "media-secret"
SETTINGS = parse_settings(
    {
        "bots": [
            {
                "id": "app",
                "platform": "wecom_app",
                "api_base": SIM,
                "credentials": {
                    "corp_id": CORP,
                    "agent_id": AGENT,
                    "secret": SECRET,
                    "token": "t",
                    "encoding_aes_key": KEY,
                },
            },
            {
                "id": "robot",
                "platform": "wecom_group_robot",
                "api_base": SIM,
                "credentials": {"token": "t", "encoding_aes_key": KEY},
            },
        ]
    },
    {},
)
WEBHOOK = f"{SIM}/cgi-bin/webhook/send?key=robot"


def _media(
    kind: str, id: str = "sim1", name: str = "x.bin", mime: str = "application/octet-stream"
) -> SimMedia:
    return SimMedia(kind=kind, id=id, name=name, size=10, sha256="0" * 64, md5="0" * 32, mime=mime)


def app_fields(media: SimMedia, recognition: str = "") -> dict[str, str]:
    return parse_xml(app_media_xml(CORP, AGENT, "alice", media, "77", 1700000000, SIM, recognition))


# ---- inbound ----------------------------------------------------------------------------------------


def test_an_app_picture_is_its_media_id_and_pic_url_without_text() -> None:
    m = app_normalize(app_fields(_media("image", "img1")), "app", AGENT, 0)
    assert m.text == "" and m.kind == "message"
    [a] = m.attachments
    assert (a.kind, a.ref, a.url) == ("image", "img1", f"{SIM}/sim/wecom/pic/img1")


def test_app_voice_carries_wecoms_recognition_as_a_transcript() -> None:
    m = app_normalize(
        app_fields(_media("voice", "v1", "v.amr", "audio/amr"), "what time is it"), "app", AGENT, 0
    )
    [a] = m.attachments
    assert (a.kind, a.ref, a.mime, a.transcript) == ("voice", "v1", "audio/amr", "what time is it")
    assert m.text == ""
    plain = app_normalize(app_fields(_media("voice", "v2")), "app", AGENT, 0)
    assert plain.attachments[0].transcript is None and plain.attachments[0].mime == "audio/speex"


def test_app_video_and_file_messages() -> None:
    video = app_normalize(app_fields(_media("video", "vid1")), "app", AGENT, 0)
    assert [(a.kind, a.ref) for a in video.attachments] == [("video", "vid1")]
    fields = {**app_fields(_media("file", "f1")), "FileName": "report.pdf", "FileSize": "1234"}
    [a] = app_normalize(fields, "app", AGENT, 0).attachments
    assert (a.kind, a.ref, a.name, a.size) == ("file", "f1", "report.pdf", 1234)


def test_repeated_xml_elements_are_numbered() -> None:
    fields = parse_xml("<xml><A><B>1</B><B>2</B><B><C>3</C></B></A><A><B>4</B></A></xml>")
    assert fields == {"A.B": "1", "A.B[1]": "2", "A.B[2].C": "3", "A[1].B": "4"}


def test_a_robot_picture_is_its_url() -> None:
    xml = robot_media_xml("wrk1", "group", "bob", "Bob", "", (_media("image", "p1"),), "9", WEBHOOK, SIM)
    m = robot_normalize(parse_xml(xml), "robot", 0)
    assert m.text == ""
    assert [(a.kind, a.ref, a.url) for a in m.attachments] == [
        ("image", f"{SIM}/sim/wecom/pic/p1", f"{SIM}/sim/wecom/pic/p1")
    ]


def test_a_robot_mixed_message_gives_its_text_and_pictures_in_order() -> None:
    images = (_media("image", "p1"), _media("image", "p2"))
    xml = robot_media_xml("wrk1", "group", "bob", "Bob", "@robot what are these?", images, "9", WEBHOOK, SIM)
    assert "<MsgType>mixed</MsgType>" in xml
    m = robot_normalize(parse_xml(xml), "robot", 0)
    assert m.text == "what are these?" and m.mentioned
    assert [a.ref for a in m.attachments] == [f"{SIM}/sim/wecom/pic/p1", f"{SIM}/sim/wecom/pic/p2"]


def test_simulated_requests_put_media_the_platforms_way() -> None:
    app, robot = SETTINGS.bot("app"), SETTINGS.bot("robot")
    assert isinstance(app, WeComAppBot) and isinstance(robot, WeComGroupRobotBot)
    app_spec, robot_spec = spec_for_platform("wecom_app"), spec_for_platform("wecom_group_robot")
    assert app_spec.sim_request is not None and robot_spec.sim_request is not None

    def msg(text: str, *media: SimMedia) -> SimMessage:
        return SimMessage(text=text, user="alice", msg_id="5", now=time.time(), sim_url=SIM, media=media)

    req = app_spec.sim_request(app, msg("", _media("file", "f9")))
    query = dict(httpx.QueryParams(req.query))
    fields = decrypt_post(crypto_for(app.credentials), query, req.body, time.time(), 300)
    assert fields["MsgType"] == "file" and fields["MediaId"] == "f9"
    with pytest.raises(SystemExit):
        app_spec.sim_request(app, msg("and text", _media("image")))
    with pytest.raises(SystemExit):
        robot_spec.sim_request(robot, msg("", _media("file")))
    req = robot_spec.sim_request(robot, msg("look", _media("image", "p3")))
    query = dict(httpx.QueryParams(req.query))
    fields = decrypt_post(crypto_for(robot.credentials), query, req.body, time.time(), 300)
    assert fields["MsgType"] == "mixed" and fields["MixedMessage.MsgItem[1].Image.ImageUrl"].endswith("/p3")


def test_the_platforms_declare_their_media() -> None:
    app = spec_for_platform("wecom_app").media
    assert app.inbound == {MediaKind.IMAGE, MediaKind.FILE, MediaKind.VOICE, MediaKind.VIDEO}
    assert app.limits[MediaKind.IMAGE] == 20 * 1024 * 1024 and app.note
    robot = spec_for_platform("wecom_group_robot").media
    assert robot.inbound == {MediaKind.IMAGE} and MediaKind.IMAGE in robot.outbound and robot.note


# ---- pure parts of sending --------------------------------------------------------------------------

MB = 1024 * 1024


@pytest.mark.parametrize(
    ("native", "kind", "mime", "size", "expected"),
    [
        (wmedia.APP_NATIVE, MediaKind.IMAGE, "image/png", 10 * MB, "image"),
        (wmedia.APP_NATIVE, MediaKind.IMAGE, "image/png", 10 * MB + 1, "file"),
        (wmedia.APP_NATIVE, MediaKind.IMAGE, "image/gif", 1000, "file"),
        (wmedia.APP_NATIVE, MediaKind.VOICE, "audio/amr", 2 * MB, "voice"),
        (wmedia.APP_NATIVE, MediaKind.VOICE, "audio/mpeg", 1000, "file"),
        (wmedia.APP_NATIVE, MediaKind.VIDEO, "video/mp4", 1000, "video"),
        (wmedia.APP_NATIVE, MediaKind.FILE, "application/pdf", 20 * MB, "file"),
        (wmedia.ROBOT_NATIVE, MediaKind.IMAGE, "image/jpeg", 2 * MB, "image"),
        (wmedia.ROBOT_NATIVE, MediaKind.IMAGE, "image/jpeg", 2 * MB + 1, "file"),
        (wmedia.ROBOT_NATIVE, MediaKind.IMAGE, "image/webp", 100, "file"),
    ],
)
def test_plan_sends_what_wecom_takes_and_a_file_otherwise(
    native: Any, kind: MediaKind, mime: str, size: int, expected: str
) -> None:
    assert wmedia.plan(native, kind, mime, size) == expected


def test_plan_refuses_above_the_file_limit_and_empty_files() -> None:
    with pytest.raises(MediaError) as err:
        wmedia.plan(wmedia.APP_NATIVE, MediaKind.IMAGE, "image/png", 20 * MB + 1)
    assert err.value.problem is MediaProblem.OVERSIZE
    with pytest.raises(MediaError) as err:
        wmedia.plan(wmedia.ROBOT_NATIVE, MediaKind.FILE, "text/plain", 4)
    assert err.value.problem is MediaProblem.UNSUPPORTED


def test_bodies() -> None:
    assert media_body("1000002", "alice", "image", "m1") == {
        "touser": "alice",
        "msgtype": "image",
        "agentid": 1000002,
        "image": {"media_id": "m1"},
        "safe": 0,
    }
    data = png()
    body = image_body(data)
    assert base64.b64decode(body["image"]["base64"]) == data
    assert body["image"]["md5"] == hashlib.md5(data).hexdigest()  # noqa: S324
    assert upload_url(WEBHOOK, SIM) == (f"{SIM}/cgi-bin/webhook/upload_media", {"key": "robot"})


def test_upload_and_download_answers() -> None:
    assert wmedia.upload_answer({"errcode": 0, "media_id": "m1"}, 200, "wecom_app", 60) == "m1"
    for code, problem in ((40005, MediaProblem.UNSUPPORTED), (40009, MediaProblem.OVERSIZE)):
        with pytest.raises(MediaError) as err:
            wmedia.upload_answer({"errcode": code, "errmsg": "x"}, 200, "wecom_app", 60)
        assert err.value.problem is problem
    with pytest.raises(TokenExpiredError):
        wmedia.upload_answer({"errcode": 42001, "errmsg": "x"}, 200, "wecom_app", 60)
    json_error = Fetched(b'{"errcode":40007,"errmsg":"invalid media_id"}', 200, "application/json")
    with pytest.raises(MediaError) as err:
        wmedia.download_error(json_error)
    assert err.value.problem is MediaProblem.DOWNLOAD_FAILED and err.value.detail == "40007"
    with pytest.raises(TokenExpiredError):
        wmedia.download_error(Fetched(b'{"errcode":40014}', 200, "text/plain"))
    # a JSON file a user sent is a file, not an error
    wmedia.download_error(Fetched(b'{"errcode":1}', 206, "application/octet-stream"))


# ---- the deliveries against the simulator, in process ------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> tuple[SimState, Starlette]:
    state = SimState.from_settings(SETTINGS)
    routes = [*store_routes(state), *app_sim_routes(state, clock), *robot_sim_routes(state, clock)]
    return state, Starlette(routes=routes)


def _app_delivery(client: httpx.AsyncClient) -> WeComAppDelivery:
    return WeComAppDelivery(
        bot_id="app",
        corp_id=CORP,
        agent_id=AGENT,
        secret=SECRET,
        api_base=SIM,
        client=client,
        tokens=TokenCache(FakeKV()),
        timeout=5,
    )


def _robot_delivery(client: httpx.AsyncClient) -> WeComGroupRobotDelivery:
    return WeComGroupRobotDelivery(bot_id="robot", api_base=SIM, client=client, timeout=5)


def _app_inbound(ref: str, kind: str = "file") -> InboundMessage:
    return app_normalize(app_fields(_media(kind, ref)), "app", AGENT, time.time())


def _chunk(platform: str) -> ReplyChunk:
    handle: Any = (
        WeComAppHandle(touser="alice", agentid=AGENT)
        if platform == "wecom_app"
        else WeComGroupRobotHandle(chat_id="wrk1", webhook_url=WEBHOOK)
    )
    return ReplyChunk(
        reply_id="r1",
        inbound_id="i1",
        platform=platform,
        bot_id="app" if platform == "wecom_app" else "robot",
        chat=Chat(id="alice" if platform == "wecom_app" else "wrk1", type=ChatType.DIRECT),
        recipient=Sender(id="alice"),
        seq=0,
        delta="",
        final=True,
        reply_handle=handle,
        received_at=datetime.now(UTC),
    )


def _ref(
    data: bytes, name: str = "chart.png", mime: str = "image/png", kind: MediaKind = MediaKind.IMAGE
) -> MediaRef:
    return MediaRef(
        kind=kind,
        key="out/r1/0",
        name=name,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        mime=mime,
    )


Sim = tuple[SimState, Starlette]


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SIM)


async def test_the_app_fetches_a_users_file_byte_exact(sim: Sim) -> None:
    state, app = sim
    doc = pdf("wecom unit")
    item = put(state, doc, name="report.pdf", kind="file", origin="user")
    async with _client(app) as client:
        delivery = _app_delivery(client)
        assert isinstance(delivery, MediaSource) and isinstance(delivery, MediaSink)
        download = Downloader(client, client, Guard(["127.0.0.0/8"]), 1 << 20)
        inbound = _app_inbound(item.id)
        fetched = await delivery.fetch_media(inbound, inbound.attachments[0], download)
        assert fetched.data == doc and fetched.filename == "report.pdf"
        # an unknown media id: WeCom's code, never the token
        with pytest.raises(MediaError) as err:
            other = inbound.attachments[0].model_copy(update={"ref": "nope"})
            await delivery.fetch_media(inbound, other, download)
        assert err.value.problem is MediaProblem.DOWNLOAD_FAILED and err.value.detail == "40007"
        # beyond the limit: refused after the limit plus one byte
        before = state.stats["wecom_media_bytes"]
        with pytest.raises(MediaError) as err:
            await delivery.fetch_media(inbound, inbound.attachments[0], download.with_limit(100))
        assert err.value.problem is MediaProblem.OVERSIZE
        assert state.stats["wecom_media_bytes"] - before <= 101


async def test_large_files_are_fetched_in_ranges(sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    state, app = sim
    monkeypatch.setattr(wmedia, "RANGE_BYTES", 1000)
    data = png(noise=4500)
    item = put(state, data, name="big.png", kind="image", origin="user")
    async with _client(app) as client:
        download = Downloader(client, client, Guard(), 1 << 20)
        got = await wmedia.media_get(
            download, f"{SIM}/cgi-bin/media/get", {"access_token": await _token(client), "media_id": item.id}
        )
        assert got.data == data
        # a file that ends exactly at a range's end
        exact = put(state, data[:3000], name="x.bin", kind="file", origin="user")
        got = await wmedia.media_get(
            download, f"{SIM}/cgi-bin/media/get", {"access_token": await _token(client), "media_id": exact.id}
        )
        assert got.data == data[:3000]


async def _token(client: httpx.AsyncClient) -> str:
    r = (await client.get("/cgi-bin/gettoken", params={"corpid": CORP, "corpsecret": SECRET})).json()
    return str(r["access_token"])


async def test_the_simulated_media_get_wants_a_range_above_20_mb(sim: Sim) -> None:
    state, app = sim
    item = put(state, b"\0" * (20 * MB + 1), name="huge.bin", kind="file", origin="user")
    async with _client(app) as client:
        tok = await _token(client)
        r = await client.get("/cgi-bin/media/get", params={"access_token": tok, "media_id": item.id})
        assert r.json()["errcode"] == 830002
        r = await client.get(
            "/cgi-bin/media/get",
            params={"access_token": tok, "media_id": item.id},
            headers={"Range": "bytes=0-9"},
        )
        assert r.status_code == 206 and r.content == b"\0" * 10
        assert r.headers["content-range"] == f"bytes 0-9/{20 * MB + 1}"
        r = await client.get(
            "/cgi-bin/media/get",
            params={"access_token": tok, "media_id": item.id},
            headers={"Range": f"bytes={20 * MB + 1}-"},
        )
        assert r.status_code == 416
        r = await client.get("/cgi-bin/media/get", params={"access_token": "bad", "media_id": item.id})
        assert r.json()["errcode"] == 40014


async def test_the_app_sends_an_answers_image_and_a_large_one_as_a_file(sim: Sim) -> None:
    state, app = sim
    data = png(3, 3)
    async with _client(app) as client:
        delivery = _app_delivery(client)
        await delivery.send_media(_chunk("wecom_app"), _ref(data), data, 1)
        gif = b"GIF89a" + b"\0" * 100
        await delivery.send_media(_chunk("wecom_app"), _ref(gif, "anim", "image/gif"), gif, 2)
        with pytest.raises(MediaError) as err:
            huge = b"\0" * (20 * MB + 1)
            await delivery.send_media(_chunk("wecom_app"), _ref(huge), huge, 3)
        assert err.value.problem is MediaProblem.OVERSIZE
    sent = [m for m in state.messages if m.get("media")]
    assert [(m["msgtype"], m["touser"], m["bot"]) for m in sent] == [
        ("image", "alice", "app"),
        ("file", "alice", "app"),
    ]
    assert sent[0]["media"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert sent[0]["content"] == "[image chart.png]" and sent[1]["content"] == "[file anim.gif]"
    assert all(m["media"]["origin"] == "upload" for m in sent)


async def test_the_simulated_app_upload_is_strict(sim: Sim, clock: Clock) -> None:
    _, app = sim
    async with _client(app) as client:
        tok = await _token(client)

        async def upload(kind: str, data: bytes, name: str = "f.bin") -> dict[str, Any]:
            r = await client.post(
                "/cgi-bin/media/upload",
                params={"access_token": tok, "type": kind},
                files={"media": (name, data, "application/octet-stream")},
            )
            answer: dict[str, Any] = r.json()
            return answer

        assert (await upload("sticker", png()))["errcode"] == 40004
        assert (await upload("image", b"GIF89a" + b"\0" * 10))["errcode"] == 40005
        assert (await upload("image", png(noise=10 * MB)))["errcode"] == 40009
        assert (await upload("voice", b"#!AMR\n" + b"\0" * (2 * MB)))["errcode"] == 40010
        assert (await upload("file", b"abc"))["errcode"] == 40006
        r = await client.post(
            "/cgi-bin/media/upload", params={"access_token": tok, "type": "file"}, data={"x": "1"}
        )
        assert r.json()["errcode"] == 41005
        ok = await upload("image", png(), "p.png")
        assert ok["errcode"] == 0 and ok["type"] == "image"
        # a media id lives three days
        body = media_body(AGENT, "alice", "image", ok["media_id"])
        clock.t += 3 * 86400 + 1
        tok = await _token(client)
        r = await client.post("/cgi-bin/message/send", params={"access_token": tok}, json=body)
        assert r.json()["errcode"] == 40007


async def test_an_expired_token_is_renewed_for_a_download(sim: Sim) -> None:
    state, app = sim
    item = put(state, png(), name="p.png", kind="image", origin="user")
    async with _client(app) as client:
        delivery = _app_delivery(client)
        kv = FakeKV()
        delivery.tokens = TokenCache(kv)
        stale = TokenRecord(token="revoked", expires_at=time.time() + 3600, fetched_at=time.time())
        await kv.put(delivery.token_key, stale.to_json())
        download = Downloader(client, client, Guard(), 1 << 20)
        inbound = _app_inbound(item.id, "image")
        fetched = await delivery.fetch_media(inbound, inbound.attachments[0], download)
        assert fetched.data == item.data


async def test_the_robot_fetches_a_picture_by_url_through_the_guard(sim: Sim) -> None:
    state, app = sim
    item = put(state, png(), name="p.png", kind="image", origin="user")
    xml = robot_media_xml("wrk1", "group", "bob", "Bob", "", (_media("image", item.id),), "9", WEBHOOK, SIM)
    inbound = robot_normalize(parse_xml(xml), "robot", time.time())
    async with _client(app) as client:
        delivery = _robot_delivery(client)
        assert isinstance(delivery, MediaSource) and isinstance(delivery, MediaSink)
        fetched = await delivery.fetch_media(
            inbound, inbound.attachments[0], Downloader(client, client, Guard(["127.0.0.0/8"]), 1 << 20)
        )
        assert fetched.data == item.data
        with pytest.raises(MediaError) as err:
            await delivery.fetch_media(
                inbound, inbound.attachments[0], Downloader(client, client, Guard(), 1 << 20)
            )
        assert err.value.problem is MediaProblem.BLOCKED


async def test_the_robot_sends_small_images_inline_and_large_ones_as_files(sim: Sim) -> None:
    state, app = sim
    small, large = png(2, 2), png(noise=2 * MB)
    async with _client(app) as client:
        delivery = _robot_delivery(client)
        await delivery.send_media(_chunk("wecom_group_robot"), _ref(small), small, 1)
        await delivery.send_media(_chunk("wecom_group_robot"), _ref(large, "big"), large, 2)
    sent = [m for m in state.messages if m.get("media")]
    assert [(m["msgtype"], m["chat"], m["bot"]) for m in sent] == [
        ("image", "robot", "robot"),
        ("file", "robot", "robot"),
    ]
    assert sent[0]["media"]["sha256"] == hashlib.sha256(small).hexdigest()
    assert sent[1]["media"]["sha256"] == hashlib.sha256(large).hexdigest()
    assert sent[1]["content"] == "[file big.png]"


async def test_the_simulated_robot_webhook_is_strict(sim: Sim) -> None:
    _, app = sim
    async with _client(app) as client:

        async def send(body: dict[str, Any], key: str = "robot") -> int:
            r = await client.post("/cgi-bin/webhook/send", params={"key": key}, json=body)
            return int(r.json()["errcode"])

        data = png()
        bad_md5 = image_body(data)
        bad_md5["image"]["md5"] = "0" * 32
        assert await send(bad_md5) == 301019
        assert await send(image_body(b"GIF89a" + b"\0" * 10)) == 40005
        assert await send(image_body(png(noise=2 * MB))) == 40009
        assert await send({"msgtype": "file", "file": {"media_id": "nope"}}) == 40007
        r = await client.post(
            "/cgi-bin/webhook/upload_media",
            params={"key": "robot", "type": "image"},
            files={"media": ("p.png", data, "image/png")},
        )
        assert r.json()["errcode"] == 40004
        r = await client.post(
            "/cgi-bin/webhook/upload_media",
            params={"key": "unknown", "type": "file"},
            files={"media": ("p.png", data, "image/png")},
        )
        assert r.json()["errcode"] == 93000
        r = await client.post(
            "/cgi-bin/webhook/upload_media",
            params={"key": "robot", "type": "file"},
            files={"media": ("p.png", data, "image/png")},
        )
        media_id = r.json()["media_id"]
        # another robot's upload is not this one's
        assert await send({"msgtype": "file", "file": {"media_id": media_id}}, key="other") == 40007
        assert await send({"msgtype": "file", "file": {"media_id": media_id}}) == 0
