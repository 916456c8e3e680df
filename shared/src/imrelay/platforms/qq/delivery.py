"""QQ bot delivery: passive replies only (QQ withdrew proactive messages), each carrying the inbound
``msg_id`` and a ``msg_seq`` (1, 2, … per part; QQ refuses a repeated pair, so a re-post is not shown
twice). QQ allows five replies per message — a longer answer is cut to five parts, the last one saying so —
within 5 minutes in groups and channels, 60 minutes one-to-one. ``Authorization: QQBot <token>``, the token
from ``{auth_base}/app/getAppAccessToken``.

Media: a message's attachment is fetched from the URL QQ gave (through the SSRF guard). An answer's image
is uploaded as base64 (``POST /v2/users/{openid}/files`` or ``/v2/groups/{group_openid}/files`` with
``file_data`` and ``srv_send_msg: false``; imrelay has no public URL to offer) and the ``file_info`` QQ
answers is sent as a media message (``msg_type: 7``), a reply like the text parts: it takes the next
``msg_seq`` and counts against the five replies (the text is cut shorter to leave room for an answer's
images). Guild channels and guild direct messages take no uploaded media: an image there is refused as
unsupported (the sender says so in a line).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from imrelay.delivery import DeliveryContext
from imrelay.delivery.chunking import split_utf8
from imrelay.delivery.http import call, json_or_none, post_for_token, retry_after, window_closed, with_token
from imrelay.delivery.tokens import TokenCache
from imrelay.errors import (
    PermanentUpstreamError,
    RateLimitedError,
    TokenExpiredError,
    TransientUpstreamError,
)
from imrelay.events import Attachment, InboundMessage, ReplyChunk
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef
from imrelay.media.fetch import Downloader, Fetched
from imrelay.platforms.qq.config import QQBot
from imrelay.platforms.qq.handle import QQHandle
from imrelay.subjects import kv_key

log = logging.getLogger(__name__)

PLATFORM = "qq"
TEXT_LIMIT_BYTES = 4000
MAX_REPLIES = 5
CUT_NOTICE = "\n…(answer shortened)"
DUPLICATE_SEQ_CODES = {40054005}  # "msg_seq already used": this part was shown before
REPLY_WINDOW_SECONDS = {"group": 300, "channel": 300, "c2c": 3600, "dm": 3600}
PATHS = {
    "group": "/v2/groups/{target}/messages",
    "c2c": "/v2/users/{target}/messages",
    "channel": "/channels/{target}/messages",
    "dm": "/dms/{guild}/messages",
}
TRANSIENT_CODES = {304082, 304083}  # "rich media fetch failed": retry

MB = 1024 * 1024
# the upload's ``file_type`` of each kind (4, files, QQ has not opened to bots)
FILE_TYPES: dict[MediaKind, int] = {MediaKind.IMAGE: 1, MediaKind.VIDEO: 2, MediaKind.VOICE: 3}
# what the upload takes, by kind: sizes (unconfirmed: QQ documents none; these are the ones QQ bot SDKs
# keep to) and types (QQ's documentation: PNG/JPG images, MP4 video, SILK voice)
UPLOAD_LIMITS: dict[MediaKind, int] = {
    MediaKind.IMAGE: 30 * MB,
    MediaKind.VIDEO: 100 * MB,
    MediaKind.VOICE: 20 * MB,
}
UPLOAD_TYPES: dict[MediaKind, frozenset[str]] = {
    MediaKind.IMAGE: frozenset({"image/png", "image/jpeg"}),
    MediaKind.VIDEO: frozenset({"video/mp4"}),
    MediaKind.VOICE: frozenset({"audio/silk"}),
}
FILE_PATHS = {"group": "/v2/groups/{target}/files", "c2c": "/v2/users/{target}/files"}


def check(payload: Any, status: int, wait: float | None, default_wait: float) -> None:
    code = payload.get("code") if isinstance(payload, dict) else None
    msg = str(payload.get("message", ""))[:200] if isinstance(payload, dict) else ""
    if status < 300 and not code:
        return
    if code in DUPLICATE_SEQ_CODES:
        return
    if status == 429:
        raise RateLimitedError(PLATFORM, code or status, msg, retry_after=wait or default_wait)
    if status == 401 or code in (11241, 11242, 11243, 11244):
        raise TokenExpiredError(PLATFORM, code or status, msg)
    if status >= 500 or code in TRANSIENT_CODES:
        raise TransientUpstreamError(PLATFORM, code or status, msg or "server error")
    raise PermanentUpstreamError(PLATFORM, code or status, msg)


def cap(parts: list[str], limit_bytes: int, max_parts: int = MAX_REPLIES) -> list[str]:
    """At most ``max_parts`` parts; when cut, the last part ends with a notice (and still fits)."""
    if len(parts) <= max_parts:
        return parts
    kept = parts[:max_parts]
    room = limit_bytes - len(CUT_NOTICE.encode())
    last = kept[-1].encode()[:room].decode("utf-8", errors="ignore")
    return [*kept[:-1], last + CUT_NOTICE]


def media_room(chunk: ReplyChunk) -> int:
    """How many of the five replies an answer's images take (each one a reply; at least one is text)."""
    return min(len(chunk.media), MAX_REPLIES - 1)


def upload_check(kind: MediaKind, mime: str, size: int) -> int:
    """The upload's ``file_type`` for ``kind``; :class:`MediaError` (``unsupported``, ``oversize``) for
    what QQ does not take."""
    file_type, limit = FILE_TYPES.get(kind), UPLOAD_LIMITS.get(kind)
    if file_type is None or limit is None:
        raise MediaError(MediaProblem.UNSUPPORTED, f"no upload of {kind.value}")
    if mime not in UPLOAD_TYPES[kind]:
        raise MediaError(MediaProblem.UNSUPPORTED, mime)
    if size > limit:
        raise MediaError(MediaProblem.OVERSIZE, f"{size} bytes, limit {limit}")
    return file_type


def upload_body(file_type: int, data: bytes) -> dict[str, Any]:
    """The body of a ``/files`` upload: the bytes themselves, base64, not sent yet."""
    encoded = base64.b64encode(data).decode("ascii")
    return {"file_type": file_type, "file_data": encoded, "srv_send_msg": False}


def media_message(file_info: str, msg_id: str, msg_seq: int) -> dict[str, Any]:
    """The passive reply that shows an uploaded file (``msg_type`` 7)."""
    return {"msg_type": 7, "media": {"file_info": file_info}, "msg_id": msg_id, "msg_seq": msg_seq}


def file_info(payload: Any) -> str:
    """The ``file_info`` of an upload's answer (one without it is worth a retry)."""
    info = payload.get("file_info") if isinstance(payload, dict) else None
    if not isinstance(info, str) or not info:
        raise TransientUpstreamError(PLATFORM, "upload", "no file_info in the answer")
    return info


@dataclass
class QQDelivery:
    bot_id: str
    app_id: str
    app_secret: str
    api_base: str
    auth_base: str
    client: httpx.AsyncClient
    tokens: TokenCache
    timeout: float
    rate_limit_backoff: float = 60.0
    platform: str = PLATFORM
    media_inline: bool = False  # an answer's images follow its text, each a media message

    @classmethod
    def from_bot(cls, bot: QQBot, ctx: DeliveryContext) -> QQDelivery:
        c = bot.credentials
        return cls(
            bot_id=bot.id,
            app_id=c.app_id,
            app_secret=c.app_secret.get_secret_value(),
            api_base=ctx.api_base(bot),
            auth_base=ctx.auth_base(bot),
            client=ctx.client,
            tokens=ctx.tokens,
            timeout=ctx.http_timeout,
            rate_limit_backoff=ctx.rate_limit_backoff,
        )

    def __repr__(self) -> str:
        return f"QQDelivery(bot_id={self.bot_id!r}, app_id={self.app_id!r}, app_secret=***)"

    def render(self, chunk: ReplyChunk) -> list[str]:
        text = chunk.full_text if chunk.full_text is not None else chunk.delta
        if not text.strip():
            return []
        return cap(split_utf8(text, TEXT_LIMIT_BYTES), TEXT_LIMIT_BYTES, MAX_REPLIES - media_room(chunk))

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        if QQHandle.of(chunk).target_kind == "channel":
            return [("qq.per_channel", kv_key(self.app_id, chunk.chat.id))]
        return []

    async def _fetch_token(self) -> tuple[str, float]:
        return await post_for_token(
            self.client,
            f"{self.auth_base}/app/getAppAccessToken",
            {"appId": self.app_id, "clientSecret": self.app_secret},
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            check=lambda p, s, w: check(p, s, w, self.rate_limit_backoff),
            answer_keys=("access_token", "expires_in"),
        )

    async def _post(self, token: str, url: str, body: dict[str, Any]) -> Any:
        resp = await call(
            self.client,
            "POST",
            url,
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            json=body,
            headers={"Authorization": f"QQBot {token}"},
        )
        payload = json_or_none(resp)
        check(payload, resp.status_code, retry_after(resp), self.rate_limit_backoff)
        return payload

    def _reply_to(self, chunk: ReplyChunk) -> QQHandle:
        h = QQHandle.of(chunk)
        if not h.msg_id:
            raise PermanentUpstreamError(PLATFORM, "no_handle", "reply handle lacks msg_id")
        if window_closed(chunk, REPLY_WINDOW_SECONDS.get(h.target_kind, 300)):
            raise PermanentUpstreamError(
                PLATFORM, "window_closed", "QQ no longer accepts replies to this message"
            )
        return h

    async def _with_token(self, url: str, body: dict[str, Any]) -> Any:
        return await with_token(
            self.tokens,
            kv_key(PLATFORM, self.app_id),
            self._fetch_token,
            lambda token: self._post(token, url, body),
            renew_early=True,
        )

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        h = self._reply_to(chunk)
        if index >= MAX_REPLIES:  # QQ takes five replies to a message: this one could not be shown
            log.info("reply %s: part %d not posted (QQ takes %d replies)", chunk.reply_id, index, MAX_REPLIES)
            return
        url = self.api_base + PATHS[h.target_kind].format(target=h.target, guild=h.guild_id)
        body = {"content": part, "msg_type": 0, "msg_id": h.msg_id, "msg_seq": index + 1}
        await self._with_token(url, body)

    # ---- media ------------------------------------------------------------------------------------

    async def fetch_media(
        self, inbound: InboundMessage, attachment: Attachment, download: Downloader
    ) -> Fetched:
        """A message's attachment: the URL QQ gave, fetched through the SSRF guard."""
        return await download.first_url(attachment.ref, attachment.url)

    async def upload(self, h: QQHandle, kind: MediaKind, data: bytes, mime: str) -> str:
        """Upload ``data`` to the chat of ``h`` (checked against QQ's limits first): its ``file_info``."""
        path = FILE_PATHS.get(h.target_kind)
        if path is None:
            raise MediaError(MediaProblem.UNSUPPORTED, f"no uploads in {h.target_kind} chats")
        file_type = upload_check(kind, mime, len(data))
        payload = await self._with_token(
            self.api_base + path.format(target=h.target), upload_body(file_type, data)
        )
        return file_info(payload)

    async def send_media(self, chunk: ReplyChunk, media: MediaRef, data: bytes, index: int) -> None:
        """An answer's image: uploaded to the chat, then a media message replying to the question."""
        h = self._reply_to(chunk)
        if index >= MAX_REPLIES:
            raise MediaError(MediaProblem.UNSUPPORTED, f"QQ takes {MAX_REPLIES} replies to a message")
        info = await self.upload(h, media.kind, data, media.mime)
        url = self.api_base + PATHS[h.target_kind].format(target=h.target, guild=h.guild_id)
        await self._with_token(url, media_message(info, h.msg_id, index + 1))
