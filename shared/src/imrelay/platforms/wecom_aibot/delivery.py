"""WeCom AI bot delivery.

A stream shows at most 20480 bytes (UTF-8, of its ``content``), so an answer is cut into parts that fit
(:func:`~imrelay.delivery.chunking.split_utf8`: on a paragraph or line break near the limit where there is
one, never inside a character); every part but the last is final as soon as the answer has grown past it.

* Callback mode: the answer's first part is written into the message's stream record, which the ingress
  serves to WeCom's refresh polls — growing while the model writes, ``finish`` with the whole first part, so
  no poll answer is ever over the limit. The other parts go out through the message's ``response_url``,
  one markdown message each.
* Long-connection mode: the stream updates are sent as NATS requests (a
  :class:`~imrelay.events.ConnectionRequest` carrying a :class:`~.frames.StreamPart`) to the connector
  replica that owns the bot's socket (``imrelay.conn.wecom_aibot.<bot>``), which sends them on the socket
  and answers once WeCom acknowledged; no owner (a takeover in progress) is a transient failure, retried.
  Each part is a stream of its own on the message's ``req_id``: the first keeps the message's stream id,
  part *n* gets ``<id>-<n>``.
  A part is finished once, while the answer streams or at its end, whichever comes first (recorded in the
  deliveries bucket like every delivered part, so no replica finishes it again). The connector keeps
  streams alive while the model is silent (``connector.stream_keepalive_seconds``).

Media. A message's image, file or video is fetched from its URL (guarded like every URL from a message) and
decrypted with the message's ``aeskey`` (:mod:`.media`). An answer's images (JPG or PNG, 10 MB each) go:

* in callback mode, with the finished stream (``media_inline``): the stream record names them and the
  ingress puts them into the last poll answer as ``msg_item`` (10 at most; the others, and any WeCom cannot
  show, are named in a line under the text);
* over the long connection, one at a time after the text (:meth:`WeComAIBotDelivery.send_media`): the
  chunked upload (``aibot_upload_media_init``/``chunk``/``finish``, each a request to the connector), then an
  image reply on the message's ``req_id``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx

from imrelay.answer_streams import CONTENT_LIMIT_BYTES, StreamStore
from imrelay.delivery import DeliveryContext, Requester
from imrelay.delivery.chunking import split_utf8
from imrelay.delivery.claims import Claim, DeliveryClaims
from imrelay.errors import PermanentUpstreamError, TransientUpstreamError
from imrelay.events import Attachment, ConnectionRequest, InboundMessage, ReplyChunk
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef, user_line
from imrelay.media.fetch import Downloader, Fetched
from imrelay.platforms.wecom_aibot.config import WeComAIBot
from imrelay.platforms.wecom_aibot.handle import WeComAIBotHandle
from imrelay.subjects import kv_key

from ..wecom.delivery import post_json
from .frames import MediaFrame, StreamPart
from .media import IMAGE_LIMIT, INLINE_IMAGES, check_image, chunks, decrypt_file, file_key

PLATFORM = "wecom_aibot"


def parts_of(text: str) -> list[str]:
    """The streams an answer is shown in, each within WeCom's limit; ``"".join`` gives the text back."""
    return split_utf8(text, CONTENT_LIMIT_BYTES) if text.strip() else [""]


def part_stream_id(sid: str, index: int) -> str:
    """The stream id of an answer's ``index``-th part: the message's own stream for the first."""
    return sid if index == 0 else f"{sid}-{index}"


@dataclass
class WeComAIBotDelivery:
    bot_id: str
    streams: StreamStore | None  # None where nothing is sent (the worker fetching media)
    client: httpx.AsyncClient
    timeout: float
    platform: str = PLATFORM
    update_interval: float = 0.3  # WeCom polls about once a second; fresher is not seen
    requester: Requester | None = None  # set for long-connection bots
    claims: DeliveryClaims | None = None  # which parts are finished, shared by the sender replicas
    _finished: set[tuple[str, int]] = field(default_factory=set)  # the same, in-process (without claims)
    aes_key: str = field(default="", repr=False)  # the bot's EncodingAESKey: decrypts files without a key
    media_inline: bool = field(init=False)  # callback mode: the finished stream shows the images

    def __post_init__(self) -> None:
        self.media_inline = self.requester is None

    @property
    def long_connection(self) -> bool:
        return self.requester is not None

    @classmethod
    def from_bot(cls, bot: WeComAIBot, ctx: DeliveryContext) -> WeComAIBotDelivery:
        claims = (
            DeliveryClaims(ctx.deliveries, stale_after=ctx.cfg.claim_timeout_seconds)
            if ctx.deliveries is not None
            else None
        )
        return cls(
            bot_id=bot.id,
            streams=ctx.answer_streams,
            client=ctx.client,
            timeout=ctx.http_timeout,
            requester=ctx.requester if bot.mode == "long_connection" else None,
            claims=claims,
            aes_key=bot.credentials.encoding_aes_key.get_secret_value(),
        )

    async def _ask(self, payload: dict[str, Any]) -> int | str | None:
        """Send one request to the connector; WeCom's answer code (0: taken)."""
        assert self.requester is not None
        try:
            answer = await self.requester(
                ConnectionRequest(
                    platform=self.platform,
                    bot_id=self.bot_id,
                    payload=payload,
                    timeout_seconds=self.timeout,
                )
            )
        except Exception as exc:
            raise TransientUpstreamError(PLATFORM, "connector", type(exc).__name__) from exc
        return 0 if answer.ok else answer.code

    async def _via_connector(self, chunk: ReplyChunk, index: int, content: str, finish: bool) -> None:
        assert self.requester is not None
        handle = WeComAIBotHandle.of(chunk)
        part = StreamPart(
            req_id=handle.req_id,
            stream_id=part_stream_id(self._sid(chunk), index),
            content=content,
            finish=finish,
            chatid=handle.chatid or chunk.recipient.id,
        )
        try:
            answer = await self.requester(
                ConnectionRequest(
                    platform=self.platform,
                    bot_id=self.bot_id,
                    payload=part.model_dump(),
                    timeout_seconds=self.timeout,
                )
            )
        except Exception as exc:
            raise TransientUpstreamError(PLATFORM, "connector", type(exc).__name__) from exc
        if not answer.ok:
            raise TransientUpstreamError(PLATFORM, str(answer.code), "not accepted on the socket")

    def render(self, chunk: ReplyChunk) -> list[str]:
        return parts_of(chunk.full_text if chunk.full_text is not None else chunk.delta)

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        return []

    def _streams(self) -> StreamStore:
        if self.streams is None:
            raise ValueError("a WeCom AI bot's delivery needs the answer streams store")
        return self.streams

    def _sid(self, chunk: ReplyChunk) -> str:
        sid = WeComAIBotHandle.of(chunk).stream_id
        if not sid:
            raise PermanentUpstreamError(PLATFORM, "no_stream", "reply handle lacks the stream id")
        return sid

    async def update(self, chunk: ReplyChunk, text: str) -> None:
        parts = parts_of(text)
        if self.requester is None:
            await self._streams().put(self.bot_id, self._sid(chunk), parts[0], False)
            return
        for index, part in enumerate(parts[:-1]):  # the answer has grown past these: finish them
            if not await self._finish_part(chunk, index, part):
                return  # being finished by another replica right now: the next update goes on
        await self._via_connector(chunk, len(parts) - 1, parts[-1], False)

    async def _finish_part(self, chunk: ReplyChunk, index: int, part: str) -> bool:
        """Finish a full part while the answer still streams, once; False if another replica is at it."""
        if self.claims is None:
            if (chunk.reply_id, index) not in self._finished:
                await self._via_connector(chunk, index, part, True)
                self._finished.add((chunk.reply_id, index))
            return True
        record = kv_key("reply", chunk.reply_id, str(index))  # the record the final delivery checks
        claim = await self.claims.claim(record)
        if claim is Claim.DONE:
            return True
        if claim is Claim.BUSY:
            return False
        try:
            async with self.claims.kept(record, claim):
                await self._via_connector(chunk, index, part, True)
        except BaseException:
            await self.claims.release(record, claim)
            raise
        await self.claims.done(record, claim)
        return True

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        if self.requester is not None:
            if (chunk.reply_id, index) not in self._finished:
                await self._via_connector(chunk, index, part, True)
            return
        if index == 0:
            media, lines = inline_media(chunk.media)
            if lines:
                part = with_lines(part, lines)
            await self._streams().put(self.bot_id, self._sid(chunk), part, True, media)
            return
        url = WeComAIBotHandle.of(chunk).response_url
        if not url:
            raise PermanentUpstreamError(
                PLATFORM, "too_long", "answer exceeds the stream and no response_url came with the message"
            )
        await post_json(
            self.client,
            url,
            {"msgtype": "markdown", "markdown": {"content": part}},
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
        )

    async def fetch_media(
        self, inbound: InboundMessage, attachment: Attachment, download: Downloader
    ) -> Fetched:
        """Download a message's encrypted file and decrypt it (the decrypted size counts for the limit)."""
        key = file_key(attachment.key, self.aes_key)
        fetched = await download.first_url(attachment.url, attachment.ref)
        if fetched.data[:1] == b"{":  # an error answer instead of the file
            try:
                code = json.loads(fetched.data).get("errcode")
            except (ValueError, AttributeError):
                code = None
            if code is not None:
                raise MediaError(MediaProblem.DOWNLOAD_FAILED, str(code))
        data = decrypt_file(fetched.data, key)
        if len(data) > download.limit:
            raise MediaError(MediaProblem.OVERSIZE, f"{len(data)} bytes, limit {download.limit}")
        return Fetched(data=data, status=fetched.status, content_type=None, filename=fetched.filename)

    async def send_media(self, chunk: ReplyChunk, media: MediaRef, data: bytes, index: int) -> None:
        """Long connection: upload the image in chunks through the connector, then reply with it."""
        if media.kind is not MediaKind.IMAGE:
            raise MediaError(MediaProblem.UNSUPPORTED, f"{media.kind.value} answers are not sent")
        check_image(media.mime, len(data))
        if self.requester is None:  # callback mode shows images with the finished stream
            raise MediaError(MediaProblem.UNSUPPORTED, "callback mode shows images inline")
        handle = WeComAIBotHandle.of(chunk)
        for frame in upload_frames(
            data,
            media_name(media),
            upload=secrets.token_hex(8),
            req_id=handle.req_id,
            chatid=handle.chatid or chunk.recipient.id,
        ):
            code = await self._ask(frame.model_dump())
            if isinstance(code, int) and code != 0:  # WeCom refused it
                raise PermanentUpstreamError(PLATFORM, str(code), f"{frame.op} refused")
            if code != 0:  # our side (a timeout, an upload begun on an earlier socket): start again
                raise TransientUpstreamError(PLATFORM, str(code), f"{frame.op} not sent")


def media_name(media: MediaRef) -> str:
    if media.name:
        return media.name
    return "image.png" if media.mime == "image/png" else "image.jpg"


def upload_frames(data: bytes, filename: str, *, upload: str, req_id: str, chatid: str) -> list[MediaFrame]:
    """The requests that send one image on the socket: init, the chunks in order, finish (and reply)."""
    pieces = chunks(data)
    init = {
        "type": "image",
        "filename": filename,
        "total_size": len(data),
        "total_chunks": len(pieces),
        "md5": hashlib.md5(data).hexdigest(),  # noqa: S324 - WeCom's checksum
    }
    frames = [MediaFrame(op="upload_init", upload=upload, body=init)]
    frames += [
        MediaFrame(
            op="upload_chunk",
            upload=upload,
            body={"chunk_index": i, "base64_data": base64.b64encode(piece).decode("ascii")},
        )
        for i, piece in enumerate(pieces)
    ]
    frames.append(MediaFrame(op="upload_finish", upload=upload, req_id=req_id, chatid=chatid))
    return frames


def inline_media(media: list[MediaRef]) -> tuple[list[MediaRef], list[str]]:
    """Callback mode: the images the finished stream shows, and lines for those it cannot."""
    shown: list[MediaRef] = []
    lines: list[str] = []
    for ref in media:
        try:
            if ref.kind is not MediaKind.IMAGE:
                raise MediaError(MediaProblem.UNSUPPORTED, ref.kind.value)
            check_image(ref.mime, ref.size)
            if len(shown) >= INLINE_IMAGES:
                raise MediaError(MediaProblem.UNSUPPORTED, f"more than {INLINE_IMAGES} images")
        except MediaError as exc:
            limit = IMAGE_LIMIT if exc.problem is MediaProblem.OVERSIZE else None
            lines.append(user_line(ref.kind, exc.problem, limit=limit, outbound=True))
            continue
        shown.append(ref)
    return shown, list(dict.fromkeys(lines))


def with_lines(part: str, lines: list[str]) -> str:
    """``part`` with ``lines`` under it, as far as the stream's limit allows."""
    out = part
    for line in lines:
        more = f"{out}\n\n{line}" if out.strip() else line
        if len(more.encode()) > CONTENT_LIMIT_BYTES:
            break
        out = more
    return out
