"""DingTalk robot delivery: the message's ``sessionWebhook`` while it is valid (no token needed), then the
robot send API with an access token (``/v1.0/robot/oToMessages/batchSend`` for one person,
``/v1.0/robot/groupMessages/send`` for a group). Answers go out as markdown; in groups the asker is @-ed.
The robot's limit (20 messages a minute) is kept by the sender's rate limiter.

Media: a message's file is fetched with its ``downloadCode`` (``/v1.0/robot/messageFiles/download`` answers
a temporary ``downloadUrl``, fetched through the SSRF guard). An answer's image is uploaded with the legacy
API (``{oapi}/media/upload``, its own access token from ``{oapi}/gettoken``) and sent through the robot API
as ``sampleImageMsg`` (a session webhook cannot carry an image).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from imrelay.delivery import DeliveryContext
from imrelay.delivery.chunking import split_utf8
from imrelay.delivery.http import (
    call,
    counted_token_fetch,
    json_or_none,
    post_for_token,
    retry_after,
    with_token,
)
from imrelay.delivery.tokens import TokenCache
from imrelay.errors import (
    PermanentUpstreamError,
    RateLimitedError,
    TokenExpiredError,
    TransientUpstreamError,
    UpstreamError,
)
from imrelay.events import Attachment, ChatType, InboundMessage, ReplyChunk
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef
from imrelay.media.fetch import Downloader, Fetched
from imrelay.platforms.dingtalk.config import DingTalkBot
from imrelay.platforms.dingtalk.handle import DingTalkHandle
from imrelay.subjects import kv_key

T = TypeVar("T")

PLATFORM = "dingtalk"
TEXT_LIMIT_BYTES = 5000
SESSION_MARGIN_MS = 60_000  # do not start a session-webhook call in its last minute
SESSION_HOSTS = {("https", "oapi.dingtalk.com")}
TOKEN_CODES = {"InvalidAuthentication", "Forbidden.AccessDenied.AccessTokenInvalid", "40014", "42001"}

MB = 1024 * 1024
# ``media/upload``: the size and the types each ``type`` takes (DingTalk's documentation, unconfirmed)
UPLOAD_LIMITS: dict[MediaKind, int] = {
    MediaKind.IMAGE: 20 * MB,
    MediaKind.VOICE: 2 * MB,
    MediaKind.VIDEO: 20 * MB,
    MediaKind.FILE: 20 * MB,
}
UPLOAD_TYPES: dict[MediaKind, frozenset[str]] = {
    MediaKind.IMAGE: frozenset({"image/jpeg", "image/png", "image/gif", "image/bmp"}),
    MediaKind.VOICE: frozenset({"audio/amr", "audio/mpeg", "audio/wav", "audio/x-wav"}),
    MediaKind.VIDEO: frozenset({"video/mp4"}),
}
UPLOAD_EXTENSIONS = frozenset({"doc", "docx", "xls", "xlsx", "ppt", "pptx", "zip", "pdf", "rar"})
# ``media/upload`` answers: a type or a size it does not take
UPLOAD_UNSUPPORTED = {40004, 40005}
UPLOAD_OVERSIZE = {40006}


def check(payload: Any, status: int, wait: float | None, default_wait: float) -> None:
    """Both answer styles: the webhook's ``errcode`` and the new API's HTTP status + ``code``."""
    if isinstance(payload, dict) and "errcode" in payload:
        code, msg = payload.get("errcode"), str(payload.get("errmsg", ""))[:200]
        if code == 0:
            return
        if str(code) in TOKEN_CODES:
            raise TokenExpiredError(PLATFORM, str(code), msg)
        if code in (130101, 90018):
            raise RateLimitedError(PLATFORM, code, msg, retry_after=wait or default_wait)
        if code in (-1, 88):
            raise TransientUpstreamError(PLATFORM, code, msg)
        raise PermanentUpstreamError(PLATFORM, str(code), msg)
    code = str(payload.get("code", "")) if isinstance(payload, dict) else ""
    msg = str(payload.get("message", ""))[:200] if isinstance(payload, dict) else ""
    if status < 300:
        return
    if status == 429:
        raise RateLimitedError(PLATFORM, code or status, msg, retry_after=wait or default_wait)
    if status == 401 or code in TOKEN_CODES:
        raise TokenExpiredError(PLATFORM, code or status, msg)
    if status >= 500:
        raise TransientUpstreamError(PLATFORM, code or status, msg or "server error")
    raise PermanentUpstreamError(PLATFORM, code or status, msg)


def upload_check(kind: MediaKind, mime: str, name: str, size: int) -> None:
    """Raise :class:`MediaError` (``unsupported``, ``oversize``) for what ``media/upload`` refuses."""
    limit = UPLOAD_LIMITS.get(kind)
    if limit is None:
        raise MediaError(MediaProblem.UNSUPPORTED, f"no upload of {kind.value}")
    if kind is MediaKind.FILE:
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if ext not in UPLOAD_EXTENSIONS:
            raise MediaError(MediaProblem.UNSUPPORTED, f"file type .{ext}")
    elif mime not in UPLOAD_TYPES[kind]:
        raise MediaError(MediaProblem.UNSUPPORTED, mime)
    if size > limit:
        raise MediaError(MediaProblem.OVERSIZE, f"{size} bytes, limit {limit}")


def upload_request(kind: MediaKind, name: str, data: bytes, mime: str) -> tuple[dict[str, str], Any]:
    """(query without the token, multipart files) of a ``media/upload`` call."""
    return {"type": kind.value}, {"media": (name, data, mime)}


def image_message(robot: str, media_id: str, chunk: ReplyChunk, staff: str) -> tuple[str, dict[str, Any]]:
    """(path, body) of the robot API call that shows an uploaded image in the chat of ``chunk``."""
    param = json.dumps({"photoURL": media_id})
    if chunk.chat.type is ChatType.GROUP:
        return "/v1.0/robot/groupMessages/send", {
            "robotCode": robot,
            "openConversationId": chunk.chat.id,
            "msgKey": "sampleImageMsg",
            "msgParam": param,
        }
    return "/v1.0/robot/oToMessages/batchSend", {
        "robotCode": robot,
        "userIds": [staff],
        "msgKey": "sampleImageMsg",
        "msgParam": param,
    }


def download_answer(payload: Any, status: int) -> str:
    """The ``downloadUrl`` of a ``messageFiles/download`` answer; :class:`TokenExpiredError` for a token
    DingTalk no longer takes, :class:`MediaError` ``download_failed`` (with DingTalk's code) otherwise."""
    code = str(payload.get("code", "")) if isinstance(payload, dict) else ""
    if status == 401 or code in TOKEN_CODES:
        raise TokenExpiredError(PLATFORM, code or status, "token")
    url = payload.get("downloadUrl") if isinstance(payload, dict) else None
    if status >= 300 or not isinstance(url, str) or not url:
        raise MediaError(MediaProblem.DOWNLOAD_FAILED, code or f"HTTP {status}")
    return url


def markdown(part: str, mention: str | None) -> tuple[str, str]:
    """(title, text) of a markdown message; DingTalk shows the title in notifications."""
    title = part.strip().splitlines()[0][:20] if part.strip() else "reply"
    return title, (f"@{mention} " if mention else "") + part


def session_allowed(url: str, api_base: str) -> bool:
    u = urlsplit(url)
    base = urlsplit(api_base)
    return (
        (u.scheme, u.netloc) in SESSION_HOSTS or (u.scheme, u.netloc) == (base.scheme, base.netloc)
    ) and u.path.startswith("/robot/")


@dataclass
class DingTalkDelivery:
    bot_id: str
    app_key: str
    app_secret: str
    api_base: str
    client: httpx.AsyncClient
    tokens: TokenCache
    timeout: float
    rate_limit_backoff: float = 60.0
    oapi_base: str = "https://oapi.dingtalk.com"  # the legacy API (media upload), its own token
    platform: str = PLATFORM
    media_inline: bool = False  # answers' images follow the text as image messages

    @classmethod
    def from_bot(cls, bot: DingTalkBot, ctx: DeliveryContext) -> DingTalkDelivery:
        c = bot.credentials
        return cls(
            bot_id=bot.id,
            app_key=c.app_key,
            app_secret=c.app_secret.get_secret_value(),
            api_base=ctx.api_base(bot),
            client=ctx.client,
            tokens=ctx.tokens,
            timeout=ctx.http_timeout,
            rate_limit_backoff=ctx.rate_limit_backoff,
            oapi_base=ctx.auth_base(bot),
        )

    def __repr__(self) -> str:
        return f"DingTalkDelivery(bot_id={self.bot_id!r}, app_key={self.app_key!r}, app_secret=***)"

    def render(self, chunk: ReplyChunk) -> list[str]:
        text = chunk.full_text if chunk.full_text is not None else chunk.delta
        return split_utf8(text, TEXT_LIMIT_BYTES) if text.strip() else []

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        return [("dingtalk.per_robot", kv_key(self.app_key))]

    async def _fetch_token(self) -> tuple[str, float]:
        return await post_for_token(
            self.client,
            f"{self.api_base}/v1.0/oauth2/accessToken",
            {"appKey": self.app_key, "appSecret": self.app_secret},
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            check=lambda p, s, w: check(p, s, w, self.rate_limit_backoff),
            answer_keys=("accessToken", "expireIn"),
        )

    async def _fetch_legacy_token(self) -> tuple[str, float]:
        async def fetch() -> tuple[str, float]:
            resp = await call(
                self.client,
                "GET",
                f"{self.oapi_base}/gettoken",
                platform=PLATFORM,
                bot=self.bot_id,
                http_timeout=self.timeout,
                failure_code="token",
                params={"appkey": self.app_key, "appsecret": self.app_secret},
            )
            payload = json_or_none(resp)
            check(payload, resp.status_code, retry_after(resp), self.rate_limit_backoff)
            return str(payload["access_token"]), float(payload.get("expires_in", 7200))

        return await counted_token_fetch(PLATFORM, self.bot_id, fetch)

    async def _with_token(self, use: Callable[[str], Awaitable[T]]) -> T:
        return await with_token(
            self.tokens, kv_key(PLATFORM, self.app_key), self._fetch_token, use, renew_early=True
        )

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        resp = await call(
            self.client,
            "POST",
            url,
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            json=body,
            headers=headers,
        )
        check(json_or_none(resp), resp.status_code, retry_after(resp), self.rate_limit_backoff)

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        handle = DingTalkHandle.of(chunk)
        staff = handle.sender_staff_id or chunk.recipient.id
        group = chunk.chat.type is ChatType.GROUP
        mention = staff if group and index == 0 else None
        title, text = markdown(part, mention)
        session, expires = handle.session_webhook, handle.session_webhook_expires_ms
        if (
            session
            and time.time() * 1000 < expires - SESSION_MARGIN_MS
            and session_allowed(session, self.api_base)
        ):
            body: dict[str, Any] = {"msgtype": "markdown", "markdown": {"title": title, "text": text}}
            if mention:
                body["at"] = {"atUserIds": [mention]}
            await self._post(session, body)
            return
        # The session webhook has expired: the robot API, with an access token.
        robot = handle.robot_code or self.app_key
        param = json.dumps({"title": title, "text": text}, ensure_ascii=False)
        if group:
            url = f"{self.api_base}/v1.0/robot/groupMessages/send"
            body = {
                "robotCode": robot,
                "openConversationId": chunk.chat.id,
                "msgKey": "sampleMarkdown",
                "msgParam": param,
            }
        else:
            url = f"{self.api_base}/v1.0/robot/oToMessages/batchSend"
            body = {"robotCode": robot, "userIds": [staff], "msgKey": "sampleMarkdown", "msgParam": param}
        await self._with_token(lambda token: self._post(url, body, {"x-acs-dingtalk-access-token": token}))

    # ---- media ------------------------------------------------------------------------------------

    async def fetch_media(
        self, inbound: InboundMessage, attachment: Attachment, download: Downloader
    ) -> Fetched:
        """A message's file: its temporary ``downloadUrl`` from the robot API, then the file (guarded)."""
        if not attachment.ref:
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, "no downloadCode")
        handle = inbound.reply_handle
        robot = (handle.robot_code if isinstance(handle, DingTalkHandle) else "") or self.app_key
        body = {"downloadCode": attachment.ref, "robotCode": robot}

        async def ask(token: str) -> str:
            got = await download.api(
                "POST",
                f"{self.api_base}/v1.0/robot/messageFiles/download",
                json=body,
                headers={"x-acs-dingtalk-access-token": token},
            )
            try:
                payload = got.json()
            except ValueError:
                payload = None
            return download_answer(payload, got.status)

        try:
            url = await self._with_token(ask)
        except UpstreamError as exc:
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, str(exc.code)) from exc
        return await download.url(url)

    async def upload(self, kind: MediaKind, name: str, data: bytes, mime: str) -> str:
        """``media/upload``: the ``media_id`` of ``data`` (checked against DingTalk's limits first)."""
        upload_check(kind, mime, name, len(data))
        query, files = upload_request(kind, name, data, mime)
        key = kv_key(PLATFORM, self.app_key, "oapi")

        async def use(token: str) -> str:
            resp = await call(
                self.client,
                "POST",
                f"{self.oapi_base}/media/upload",
                platform=PLATFORM,
                bot=self.bot_id,
                http_timeout=self.timeout,
                params={**query, "access_token": token},
                files=files,
            )
            payload = json_or_none(resp)
            code = payload.get("errcode") if isinstance(payload, dict) else None
            if code in UPLOAD_UNSUPPORTED:
                raise MediaError(MediaProblem.UNSUPPORTED, str(code))
            if code in UPLOAD_OVERSIZE:
                raise MediaError(MediaProblem.OVERSIZE, str(code))
            check(payload, resp.status_code, retry_after(resp), self.rate_limit_backoff)
            media_id = payload.get("media_id") if isinstance(payload, dict) else None
            if not isinstance(media_id, str) or not media_id:
                raise TransientUpstreamError(PLATFORM, "upload", "no media_id in the answer")
            return media_id

        return await with_token(self.tokens, key, self._fetch_legacy_token, use, renew_early=True)

    async def send_media(self, chunk: ReplyChunk, media: MediaRef, data: bytes, index: int) -> None:
        """An answer's image: uploaded, then an image message through the robot API."""
        if media.kind is not MediaKind.IMAGE:
            raise MediaError(MediaProblem.UNSUPPORTED, f"no {media.kind.value} messages")
        media_id = await self.upload(media.kind, media.name or "image", data, media.mime)
        handle = DingTalkHandle.of(chunk)
        staff = handle.sender_staff_id or chunk.recipient.id
        path, body = image_message(handle.robot_code or self.app_key, media_id, chunk, staff)
        await self._with_token(
            lambda token: self._post(f"{self.api_base}{path}", body, {"x-acs-dingtalk-access-token": token})
        )
