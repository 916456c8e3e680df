"""The worker's media step against a real nats-server (the media Object Store bucket) and a real HTTP
server: stored media is reused by a redelivered message, oversize media is refused before it is
downloaded in full, entries expire, and an answer's images are fetched only from allowed addresses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import nats
import pytest
from nats.js.errors import NotFoundError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from imrelay.events import Attachment, Chat, ChatType, InboundMessage, Sender
from imrelay.jetstream import ensure_media_store
from imrelay.media import MediaKind, MediaProblem
from imrelay.media.fetch import Downloader, Fetched
from imrelay.media.store import ObjectMediaStore
from imrelay.natsserver import EmbeddedNats
from imrelay.sections import MediaConfig
from imrelay_worker.media import MediaStep

from ..conftest import make_settings, wecom_app_bot
from ..helpers import free_port, served
from ..media_files import png

pytestmark = pytest.mark.nats

PHOTO = png(16, 16)
BIG = png(noise=24 * 1024 * 1024)  # far more than the sockets between the two ends hold


@dataclass
class Files:
    """A file server that counts requests and bytes sent, and can hide a body's length."""

    port: int = field(default_factory=free_port)
    hits: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        files = {"photo.png": PHOTO, "big.png": BIG}

        async def serve(request: Request) -> Response:
            name = request.path_params["name"]
            self.hits[name] = self.hits.get(name, 0) + 1
            data = files[name.removeprefix("chunked-")]

            async def body() -> AsyncIterator[bytes]:
                for i in range(0, len(data), 16_384):
                    if await request.is_disconnected():  # the reader stopped: so does the server
                        return
                    self.sent[name] = self.sent.get(name, 0) + len(data[i : i + 16_384])
                    yield data[i : i + 16_384]

            if name.startswith("chunked-"):  # no Content-Length
                return StreamingResponse(body(), media_type="image/png")
            return Response(data, media_type="application/octet-stream")

        async def moved(request: Request) -> Response:
            return Response(status_code=302, headers={"location": "http://169.254.169.254/latest/meta-data/"})

        self.app = Starlette(routes=[Route("/f/{name}", serve), Route("/moved", moved)])

    def url(self, name: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/f/{name}"


@pytest.fixture(scope="module")
def files() -> Iterator[Files]:
    f = Files()
    with served(f.app, f.port):
        yield f


class UrlSource:
    """A platform whose messages carry their files' URLs."""

    media_inline = False

    def __init__(self) -> None:
        self.calls = 0

    async def fetch_media(
        self, inbound: InboundMessage, attachment: Attachment, download: Downloader
    ) -> Fetched:
        self.calls += 1
        return await download.url(attachment.ref)


def inbound(*attachments: Attachment, msg: str = "m1") -> InboundMessage:
    return InboundMessage(
        id=f"inbound-{msg}-{time.time_ns()}",
        platform="wecom_app",
        bot_id="app",
        platform_message_id=msg,
        chat=Chat(id="u", type=ChatType.DIRECT),
        sender=Sender(id="u"),
        attachments=list(attachments),
    )


@pytest.fixture
async def step(nats_server: EmbeddedNats) -> AsyncIterator[tuple[MediaStep, UrlSource]]:
    nc = await nats.connect(nats_server.url)
    settings = make_settings(
        [wecom_app_bot()],
        nats={"url": nats_server.url},
        media={"max_bytes": 1024 * 1024, "allow_private_networks": ["127.0.0.0/8"]},
    )
    store = ObjectMediaStore(await ensure_media_store(nc.jetstream(), settings.nats, 3600))
    source = UrlSource()
    async with httpx.AsyncClient() as client, httpx.AsyncClient(trust_env=False) as direct:
        yield MediaStep(settings.media, store, {"app": source}, client, direct), source  # type: ignore[dict-item]
    await nc.close()


async def test_a_redelivered_message_reuses_its_stored_media(
    step: tuple[MediaStep, UrlSource], files: Files
) -> None:
    media, source = step
    bot = make_settings([wecom_app_bot()]).bots[0]
    msg = inbound(Attachment(kind="image", ref=files.url("photo.png")))
    first = await media.gather(msg, bot)
    [got] = first.media
    assert got.data == PHOTO and got.ref.mime == "image/png" and got.ref.kind is MediaKind.IMAGE
    hits = files.hits["photo.png"]
    again = await media.gather(msg, bot)  # the same event, delivered again
    assert [m.ref for m in again.media] == [got.ref] and again.media[0].data == PHOTO
    assert files.hits["photo.png"] == hits and source.calls == 1


async def test_oversize_media_is_refused_before_it_is_downloaded_in_full(
    step: tuple[MediaStep, UrlSource], files: Files
) -> None:
    media, source = step
    bot = make_settings([wecom_app_bot()]).bots[0]
    # declared by the platform: not fetched at all
    declared = await media.gather(
        inbound(Attachment(kind="image", ref=files.url("big.png"), size=len(BIG))), bot
    )
    assert declared.media == [] and [u.problem for u in declared.unread] == [MediaProblem.OVERSIZE]
    assert "big.png" not in files.hits and source.calls == 0
    assert declared.unread[0].line == "(I could not read your picture: it is larger than 1 MB.)"
    # undeclared, no Content-Length: reading stops past the cap
    cut = await media.gather(inbound(Attachment(kind="image", ref=files.url("chunked-big.png"))), bot)
    assert [u.problem for u in cut.unread] == [MediaProblem.OVERSIZE]
    assert files.sent["chunked-big.png"] < len(BIG) // 2


async def test_answer_images_only_from_allowed_addresses(
    step: tuple[MediaStep, UrlSource], files: Files
) -> None:
    media, _ = step
    text = f"Here is the chart: ![chart]({files.url('photo.png')})"
    shown, refs, lines = await media.answer_images("wecom_app", "reply-1", text)
    assert shown == "Here is the chart: chart" and lines == []
    [ref] = refs
    assert ref.sha256 == __import__("hashlib").sha256(PHOTO).hexdigest() and ref.key == "out/reply-1/0"
    closed = MediaStep(
        MediaConfig(), media.store, {}, media.client, media.direct
    )  # no private network allowed: the default
    hits = dict(files.hits)
    for url in (files.url("photo.png"), "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/x.png"):
        shown, refs, lines = await closed.answer_images(
            "wecom_app", f"reply-{time.time_ns()}", f"![i]({url})"
        )
        assert refs == [] and lines == [
            "(A picture in this answer could not be shown: its address is not allowed.)"
        ]
    assert files.hits == hits  # nothing was requested
    # an allowed address redirecting to the metadata address is not followed there
    _, refs, lines = await media.answer_images(
        "wecom_app", "reply-3", f"![x](http://127.0.0.1:{files.port}/moved)"
    )
    assert refs == [] and "not allowed" in lines[0]


async def test_entries_expire(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    with contextlib.suppress(NotFoundError):  # not there yet
        await js.delete_object_store("imrelay_media")
    store = ObjectMediaStore(await ensure_media_store(js, make_settings().nats, 1.0))
    ref = await store.put("in/short/0", PHOTO, kind=MediaKind.IMAGE, name="p.png", mime="image/png")
    assert await store.find("in/short/0") == ref
    deadline = time.monotonic() + 30
    while await store.find("in/short/0") is not None:
        assert time.monotonic() < deadline, "the entry did not expire"
        await asyncio.sleep(0.25)
    await js.delete_object_store("imrelay_media")
    await nc.close()


class BrokenSource:
    media_inline = False

    async def fetch_media(
        self, inbound: InboundMessage, attachment: Attachment, download: Downloader
    ) -> Fetched:
        raise httpx.ConnectError("platform unreachable")


async def test_a_platform_failing_unexpectedly_gives_the_line_not_a_failed_message(
    step: tuple[MediaStep, UrlSource],
) -> None:
    media, _ = step
    broken = MediaStep(media.cfg, media.store, {"app": BrokenSource()}, media.client, media.direct)  # type: ignore[dict-item]
    bot = make_settings([wecom_app_bot()]).bots[0]
    got = await broken.gather(inbound(Attachment(kind="file", ref="media-id-1", name="a.pdf")), bot)
    assert got.media == [] and [u.problem for u in got.unread] == [MediaProblem.DOWNLOAD_FAILED]
    assert got.unread[0].line == "(I could not read your file: it could not be downloaded.)"
