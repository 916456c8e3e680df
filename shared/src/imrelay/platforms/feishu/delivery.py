"""Feishu / Lark delivery: ``tenant_access_token`` (cached cluster-wide, renewed ahead of expiry — Feishu
issues a new token when less than 30 minutes remain) and the message reply API.

Streaming (CardKit, card JSON 2.0): the first delta creates a card in streaming mode with one markdown
element and replies with it; later deltas replace the element's content with the answer so far (Feishu
animates the new part), strictly increasing ``sequence`` numbers, at most ~3 updates a second (the limit is
10 per card); the final sets the whole answer and turns streaming mode off. The card id is kept in the
deliveries KV bucket so any sender replica can continue the answer.

An answer with no deltas is replied as a ``text`` message (markdown answers as an interactive card). Every
reply carries a ``uuid`` made from the reply id and part, which Feishu uses to drop a repeated send, so a
reply re-posted after a crash still shows once.

Media: a message's resources (pictures, files, voice, video) are downloaded with the message resource API
(``GET /open-apis/im/v1/messages/{message_id}/resources/{key}?type=image|file``, at most 100 MB). An
answer's pictures are uploaded (``POST /open-apis/im/v1/images``, at most 10 MB) and shown inside the
streamed card (``img`` elements appended in the final update); an answer that was not streamed gets them
as ``image`` replies after its text. Files go through ``POST /open-apis/im/v1/files`` (at most 30 MB).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from imrelay.delivery import DeliveryContext
from imrelay.delivery.chunking import split_utf8
from imrelay.delivery.http import call, json_or_none, post_for_token, retry_after, with_token
from imrelay.delivery.tokens import TokenCache
from imrelay.errors import (
    PermanentUpstreamError,
    RateLimitedError,
    TokenExpiredError,
    TransientUpstreamError,
    UpstreamError,
)
from imrelay.events import Attachment, ChatType, InboundMessage, ReplyChunk, ReplyFormat
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef, user_line
from imrelay.media.fetch import Downloader, Fetched
from imrelay.media.store import MediaStore
from imrelay.platforms.feishu.config import FeishuBot
from imrelay.platforms.feishu.handle import FeishuHandle
from imrelay.subjects import kv_key

log = logging.getLogger("imrelay.sender.feishu")

TEXT_LIMIT_BYTES = 30_000  # well under Feishu's request size limit for one message
TOKEN_CODES = {99991661, 99991663, 99991664}
RATE_CODES = {99991400, 230020}
TRANSIENT_CODES = {1500, 1503, 1000004, 1000005}
SEQUENCE_TAKEN = 300317  # CardKit: the card already has this sequence number or a later one


def check(platform: str, payload: Any, status: int, wait: float | None, default_wait: float) -> None:
    """Raise what a Feishu answer means (``code`` 0 is success)."""
    code = payload.get("code") if isinstance(payload, dict) else None
    msg = str(payload.get("msg", ""))[:200] if isinstance(payload, dict) else ""
    if status == 429 or code in RATE_CODES:
        raise RateLimitedError(platform, code or status, msg, retry_after=wait or default_wait)
    if code in TOKEN_CODES:
        raise TokenExpiredError(platform, code, msg)
    if status >= 500 or code in TRANSIENT_CODES:
        raise TransientUpstreamError(platform, code or status, msg or "server error")
    if code is None:
        raise (PermanentUpstreamError if status >= 400 else TransientUpstreamError)(
            platform, status, "answer without code"
        )
    if code != 0:
        raise PermanentUpstreamError(platform, code, msg)


def reply_body(part: str, fmt: ReplyFormat, uuid: str) -> dict[str, Any]:
    if fmt is ReplyFormat.MARKDOWN:
        card = {"config": {"wide_screen_mode": True}, "elements": [{"tag": "markdown", "content": part}]}
        return {"msg_type": "interactive", "content": json.dumps(card, ensure_ascii=False), "uuid": uuid}
    return {"msg_type": "text", "content": json.dumps({"text": part}, ensure_ascii=False), "uuid": uuid}


ELEMENT = "answer"

MB = 1024 * 1024
IMAGE_LIMIT = 10 * MB  # POST /open-apis/im/v1/images
FILE_LIMIT = 30 * MB  # POST /open-apis/im/v1/files
DOWNLOAD_LIMIT = 100 * MB  # the message resource API
# what the image upload takes (JPEG, PNG, WEBP, GIF, TIFF, BMP, ICO)
IMAGE_UPLOAD_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/tiff",
        "image/bmp",
        "image/x-ms-bmp",
        "image/x-icon",
        "image/vnd.microsoft.icon",
    }
)
# the upload's answer codes that mean the file itself is refused (not worth a retry)
UPLOAD_OVERSIZE_CODES = {234006}
UPLOAD_REFUSED_CODES = {234010, 234011}
DOWNLOAD_OVERSIZE_CODES = {234037}
_FILE_TYPES = {
    "application/pdf": "pdf",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "doc",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xls",
    "application/vnd.ms-powerpoint": "ppt",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "ppt",
    "video/mp4": "mp4",
    "audio/ogg": "opus",
    "audio/opus": "opus",
}


def resource_type(kind: str) -> str:
    """The ``type`` the resource API wants: ``image`` for pictures, ``file`` for files, voice and video."""
    return "image" if kind == MediaKind.IMAGE else "file"


def resource_path(message_id: str, key: str) -> str:
    return f"/open-apis/im/v1/messages/{quote(message_id, safe='')}/resources/{quote(key, safe='')}"


def resource_error(fetched: Fetched) -> tuple[int | str, MediaProblem] | None:
    """What a resource API answer means when it is not the file: Feishu answers errors as JSON with a
    ``code`` (None: the bytes are the file)."""
    ctype = (fetched.content_type or "").split(";")[0].strip().lower()
    if fetched.status == 200 and ctype != "application/json":
        return None
    try:
        payload = fetched.json()
    except ValueError:
        payload = None
    code = payload.get("code") if isinstance(payload, dict) else None
    if fetched.status == 200 and code in (None, 0):
        return None  # a JSON file
    code = code if isinstance(code, int | str) and code not in (None, 0) else f"HTTP {fetched.status}"
    if code in DOWNLOAD_OVERSIZE_CODES:
        return code, MediaProblem.OVERSIZE
    return code, MediaProblem.DOWNLOAD_FAILED


_FILE_EXTENSIONS = {
    "pdf": "pdf",
    "doc": "doc",
    "docx": "doc",
    "xls": "xls",
    "xlsx": "xls",
    "ppt": "ppt",
    "pptx": "ppt",
    "mp4": "mp4",
    "opus": "opus",
}


def file_type(mime: str, name: str) -> str:
    """The ``file_type`` of the file upload (``stream`` for anything without its own)."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _FILE_TYPES.get(mime) or _FILE_EXTENSIONS.get(ext) or "stream"


def check_outbound(media: MediaRef, data: bytes) -> MediaKind:
    """How the piece is sent (image or file), or :class:`MediaError` when Feishu would refuse it."""
    if not data:
        raise MediaError(MediaProblem.UNSUPPORTED, "empty")
    if media.kind is MediaKind.IMAGE:
        if media.mime not in IMAGE_UPLOAD_TYPES:
            raise MediaError(MediaProblem.UNSUPPORTED, f"not an image Feishu takes: {media.mime}")
        if len(data) > IMAGE_LIMIT:
            raise MediaError(MediaProblem.OVERSIZE, f"{len(data)} bytes, limit {IMAGE_LIMIT}")
        return MediaKind.IMAGE
    if media.kind is MediaKind.FILE:
        if len(data) > FILE_LIMIT:
            raise MediaError(MediaProblem.OVERSIZE, f"{len(data)} bytes, limit {FILE_LIMIT}")
        return MediaKind.FILE
    raise MediaError(MediaProblem.UNSUPPORTED, f"{media.kind.value} is not sent")


def upload_form(kind: MediaKind, media: MediaRef, data: bytes) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(path, form fields, files) of the upload of an image or a file."""
    name = media.name or f"{kind.value}"
    if kind is MediaKind.IMAGE:
        return "/open-apis/im/v1/images", {"image_type": "message"}, {"image": (name, data, media.mime)}
    fields = {"file_type": file_type(media.mime, name), "file_name": name}
    return "/open-apis/im/v1/files", fields, {"file": (name, data, media.mime)}


def media_message(kind: MediaKind, key: str) -> tuple[str, str]:
    """(msg_type, content) of a message showing an uploaded image or file."""
    if kind is MediaKind.IMAGE:
        return "image", json.dumps({"image_key": key})
    return "file", json.dumps({"file_key": key})


def image_element(image_key: str, alt: str, index: int) -> dict[str, Any]:
    """A card (JSON 2.0) ``img`` element."""
    return {
        "tag": "img",
        "element_id": f"image{index}",
        "img_key": image_key,
        "alt": {"tag": "plain_text", "content": alt[:100]},
        "preview": True,
        "scale_type": "fit_horizontal",
    }


def streaming_card(summary: str) -> dict[str, Any]:
    return {
        "schema": "2.0",
        "config": {
            "streaming_mode": True,
            "summary": {"content": summary},
            "streaming_config": {"print_frequency_ms": {"default": 50}, "print_step": {"default": 2}},
        },
        "body": {"elements": [{"tag": "markdown", "content": "", "element_id": ELEMENT}]},
    }


@dataclass
class FeishuDelivery:
    bot_id: str
    platform: str
    app_id: str
    app_secret: str
    api_base: str
    client: httpx.AsyncClient
    tokens: TokenCache
    timeout: float
    streams: KeyValue | None = None
    rate_limit_backoff: float = 60.0
    update_interval: float = 0.3
    media: MediaStore | None = None

    @classmethod
    def from_bot(cls, bot: FeishuBot, ctx: DeliveryContext) -> FeishuDelivery:
        c = bot.credentials
        return cls(
            bot_id=bot.id,
            platform=bot.platform,
            app_id=c.app_id,
            app_secret=c.app_secret.get_secret_value(),
            api_base=ctx.api_base(bot),
            client=ctx.client,
            tokens=ctx.tokens,
            timeout=ctx.http_timeout,
            streams=ctx.deliveries,
            rate_limit_backoff=ctx.rate_limit_backoff,
            media=ctx.media,
        )

    def __repr__(self) -> str:
        return f"FeishuDelivery(bot_id={self.bot_id!r}, app_id={self.app_id!r}, app_secret=***)"

    @property
    def token_key(self) -> str:
        return kv_key(self.platform, self.app_id)

    @property
    def media_inline(self) -> bool:
        """Streamed answers show their pictures inside the card: the final update adds them."""
        return self.streams is not None

    def render(self, chunk: ReplyChunk) -> list[str]:
        text = chunk.full_text if chunk.full_text is not None else chunk.delta
        if text.strip():
            return split_utf8(text, TEXT_LIMIT_BYTES)
        # an answer of pictures only: one (empty) part that shows them
        return [""] if chunk.final and chunk.media and self.media_inline else []

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        return [
            ("feishu.per_app", kv_key(self.platform, self.app_id)),
            ("feishu.per_chat", kv_key(self.platform, self.app_id, chunk.chat.id)),
        ]

    async def _fetch_token(self) -> tuple[str, float]:
        return await post_for_token(
            self.client,
            f"{self.api_base}/open-apis/auth/v3/tenant_access_token/internal",
            {"app_id": self.app_id, "app_secret": self.app_secret},
            platform=self.platform,
            bot=self.bot_id,
            http_timeout=self.timeout,
            check=lambda p, s, w: check(self.platform, p, s, w, self.rate_limit_backoff),
            answer_keys=("tenant_access_token", "expire"),
        )

    async def _api(self, method: str, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """One authorized Feishu API call (refreshing the token once if Feishu says it is invalid): a JSON
        ``body``, or ``data`` and ``files`` for a multipart upload."""

        async def use(token: str) -> Any:
            resp = await call(
                self.client,
                method,
                f"{self.api_base}{path}",
                platform=self.platform,
                bot=self.bot_id,
                http_timeout=self.timeout,
                headers={"Authorization": f"Bearer {token}"},
                **({"json": body} if body is not None else kwargs),
            )
            payload = json_or_none(resp)
            check(
                self.platform,
                payload,
                resp.status_code,
                retry_after(resp, "x-ogw-ratelimit-reset"),
                self.rate_limit_backoff,
            )
            return payload

        return await with_token(self.tokens, self.token_key, self._fetch_token, use, renew_early=True)

    async def _stream_state(self, chunk: ReplyChunk) -> tuple[dict[str, Any], int | None]:
        assert self.streams is not None
        try:
            entry = await self.streams.get(kv_key("stream", chunk.reply_id))
            return json.loads(entry.value or b"{}"), entry.revision
        except KeyNotFoundError:
            return {}, None

    async def update(self, chunk: ReplyChunk, text: str) -> None:
        message_id = FeishuHandle.of(chunk).message_id
        if self.streams is None or not message_id or len(text.encode()) > TEXT_LIMIT_BYTES:
            return
        key = kv_key("stream", chunk.reply_id)
        state, revision = await self._stream_state(chunk)
        if not state.get("card_id"):
            created = await self._api(
                "POST",
                "/open-apis/cardkit/v1/cards",
                {"type": "card_json", "data": json.dumps(streaming_card(text[:40]), ensure_ascii=False)},
            )
            state = {"card_id": created["data"]["card_id"], "replied": False}
            # remember the card before showing it: a crash now leaves an unseen card, never a lost one
            await self.streams.put(key, json.dumps(state).encode())
        if not state.get("replied"):
            content = json.dumps({"type": "card", "data": {"card_id": state["card_id"]}})
            await self._api(
                "POST",
                f"/open-apis/im/v1/messages/{message_id}/reply",
                {"msg_type": "interactive", "content": content, "uuid": f"{chunk.reply_id}-card"[:50]},
            )
            state["replied"] = True
            await self.streams.put(key, json.dumps(state).encode())
        await self._api(
            "PUT",
            f"/open-apis/cardkit/v1/cards/{state['card_id']}/elements/{ELEMENT}/content",
            {"content": text, "sequence": chunk.seq + 1},
        )

    async def _finish_card(
        self, chunk: ReplyChunk, card_id: str, text: str, images: list[dict[str, Any]] | None = None
    ) -> None:
        base = f"/open-apis/cardkit/v1/cards/{card_id}"
        await self._card_step(
            "PUT", f"{base}/elements/{ELEMENT}/content", {"content": text, "sequence": chunk.seq + 1}
        )
        if images:
            await self._card_step(
                "POST",
                f"{base}/elements",
                {
                    "type": "append",
                    "elements": json.dumps(images, ensure_ascii=False),
                    "uuid": f"{chunk.reply_id}-images"[:64],
                    "sequence": chunk.seq + 2,
                },
            )
        await self._card_step(
            "PATCH",
            f"{base}/settings",
            {"settings": json.dumps({"config": {"streaming_mode": False}}), "sequence": chunk.seq + 3},
        )

    async def _card_step(self, method: str, path: str, body: dict[str, Any]) -> None:
        """One step of finishing a card. The final's sequence numbers are the reply's last: a card that
        already has one (an earlier attempt of this final got that far) needs the step no more."""
        try:
            await self._api(method, path, body)
        except PermanentUpstreamError as exc:
            if exc.code != SEQUENCE_TAKEN:
                raise

    # ---- media ------------------------------------------------------------------------------------

    async def fetch_media(
        self, inbound: InboundMessage, attachment: Attachment, download: Downloader
    ) -> Fetched:
        """A message's resource by the resource API, with the bot's token (capped at ``download.limit``)."""
        try:
            message_id = FeishuHandle.of(inbound).message_id
        except PermanentUpstreamError as exc:
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, "no message id") from exc
        if not attachment.ref or not message_id:
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, "no resource key")
        url = f"{self.api_base}{resource_path(message_id, attachment.ref)}"
        params = {"type": resource_type(attachment.kind)}

        async def use(token: str) -> Fetched:
            fetched = await download.api(
                "GET", url, params=params, headers={"Authorization": f"Bearer {token}"}
            )
            problem = resource_error(fetched)
            if problem is None:
                return fetched
            code, kind = problem
            if code in TOKEN_CODES:
                raise TokenExpiredError(self.platform, code, "token")
            raise MediaError(kind, str(code))

        try:
            return await with_token(self.tokens, self.token_key, self._fetch_token, use, renew_early=True)
        except UpstreamError as exc:
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, str(exc.code)) from exc

    async def _upload(self, media: MediaRef, data: bytes) -> tuple[MediaKind, str]:
        """Upload an image or a file; (how it is sent, its ``image_key`` / ``file_key``)."""
        kind = check_outbound(media, data)
        path, fields, files = upload_form(kind, media, data)
        try:
            answer = await self._api("POST", path, data=fields, files=files)
        except PermanentUpstreamError as exc:
            if exc.code in UPLOAD_OVERSIZE_CODES:
                raise MediaError(MediaProblem.OVERSIZE, str(exc.code)) from exc
            if exc.code in UPLOAD_REFUSED_CODES:
                raise MediaError(MediaProblem.UNSUPPORTED, str(exc.code)) from exc
            raise
        data_part = answer.get("data") if isinstance(answer, dict) else None
        key = (data_part or {}).get("image_key" if kind is MediaKind.IMAGE else "file_key")
        if not isinstance(key, str) or not key:
            raise TransientUpstreamError(self.platform, "upload", "the upload answered no key")
        return kind, key

    async def send_media(self, chunk: ReplyChunk, media: MediaRef, data: bytes, index: int) -> None:
        """Upload the picture (or file) and reply to the user's message with it."""
        message_id = FeishuHandle.of(chunk).message_id
        if not message_id:
            raise PermanentUpstreamError(self.platform, "no_message", "reply handle lacks message_id")
        kind, key = await self._upload(media, data)
        msg_type, content = media_message(kind, key)
        body: dict[str, Any] = {
            "msg_type": msg_type,
            "content": content,
            "uuid": f"{chunk.reply_id}-m{index}"[:50],
        }
        await self._api("POST", f"/open-apis/im/v1/messages/{message_id}/reply", body)

    async def _stored(self, media: MediaRef) -> bytes:
        if self.media is None:
            raise MediaError(MediaProblem.UPLOAD_FAILED, "no media store")
        try:
            return await self.media.get(media)
        except MediaError:
            raise
        except Exception as exc:  # expired or missing in the bucket
            raise MediaError(MediaProblem.UPLOAD_FAILED, type(exc).__name__) from exc

    async def _card_images(self, chunk: ReplyChunk) -> tuple[list[dict[str, Any]], list[str]]:
        """The answer's pictures uploaded, as card elements; a line for each that could not be."""
        elements: list[dict[str, Any]] = []
        lines: list[str] = []
        for index, media in enumerate(chunk.media):
            try:
                data = await self._stored(media)
                if check_outbound(media, data) is not MediaKind.IMAGE:
                    raise MediaError(MediaProblem.UNSUPPORTED, "not an image")
                _, key = await self._upload(media, data)
            except MediaError as exc:
                log.info("reply %s: image %d not shown (%s)", chunk.reply_id, index, exc.problem.value)
                limit = IMAGE_LIMIT if exc.problem is MediaProblem.OVERSIZE else None
                lines.append(user_line(media.kind, exc.problem, limit=limit, outbound=True))
                continue
            elements.append(image_element(key, media.name, index))
        return elements, lines

    async def _reply_media(self, chunk: ReplyChunk) -> None:
        """An answer that was not streamed: its pictures as replies after its text."""
        lines: list[str] = []
        for index, media in enumerate(chunk.media):
            try:
                await self.send_media(chunk, media, await self._stored(media), index)
            except MediaError as exc:
                log.info("reply %s: image %d not sent (%s)", chunk.reply_id, index, exc.problem.value)
                limit = IMAGE_LIMIT if exc.problem is MediaProblem.OVERSIZE else None
                lines.append(user_line(media.kind, exc.problem, limit=limit, outbound=True))
        if lines:
            body = reply_body("\n".join(lines), ReplyFormat.TEXT, f"{chunk.reply_id}-mlines"[:50])
            message_id = FeishuHandle.of(chunk).message_id
            await self._api("POST", f"/open-apis/im/v1/messages/{message_id}/reply", body)

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        message_id = FeishuHandle.of(chunk).message_id
        if not message_id:
            raise PermanentUpstreamError(self.platform, "no_message", "reply handle lacks message_id")
        if index == 0 and self.streams is not None:
            state, _ = await self._stream_state(chunk)
            if state.get("card_id") and state.get("replied"):
                images: list[dict[str, Any]] = []
                if chunk.media and self.media_inline:
                    if "images" not in state:  # uploaded once: a retried final reuses them
                        state["images"], state["image_lines"] = await self._card_images(chunk)
                        await self.streams.put(kv_key("stream", chunk.reply_id), json.dumps(state).encode())
                    images = list(state["images"])
                    part = "\n\n".join(x for x in (part, *state["image_lines"]) if x)
                await self._finish_card(chunk, str(state["card_id"]), part, images)
                return
        if part:
            # one uuid per reply part: Feishu drops a repeated send with the same uuid
            body = reply_body(part, chunk.format, f"{chunk.reply_id}-{index}"[:50])
            if chunk.chat.type is ChatType.GROUP and index == 0:
                body["reply_in_thread"] = False
            await self._api("POST", f"/open-apis/im/v1/messages/{message_id}/reply", body)
        if chunk.final and chunk.media and self.media_inline and index == len(self.render(chunk)) - 1:
            await self._reply_media(chunk)
