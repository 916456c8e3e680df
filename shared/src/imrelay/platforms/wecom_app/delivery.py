"""WeCom self-built app delivery: ``gettoken`` (cached cluster-wide) and ``message/send`` text messages.

Text content is limited to 2048 bytes, so longer answers are split on character boundaries and sent in
order. ``enable_duplicate_check`` asks WeCom to drop an identical message resent within 30 minutes, a second
net under the sender's own delivery records.

Media: a message's picture, voice, video or file is downloaded with ``media/get`` by its ``MediaId`` (in
ranges, see :mod:`imrelay.platforms.wecom.media`; a picture without one by its ``PicUrl``, through the
address guard). An answer's image is uploaded with ``media/upload`` and sent with ``message/send`` as an
image message (a file message when it is not a JPG/PNG up to 10 MB), after the text.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from imrelay.delivery import DeliveryContext
from imrelay.delivery.chunking import split_utf8
from imrelay.delivery.http import call, counted_token_fetch, with_token
from imrelay.delivery.tokens import TokenCache
from imrelay.errors import UpstreamError
from imrelay.events import Attachment, InboundMessage, ReplyChunk, ReplyFormat
from imrelay.media import MediaError, MediaKind, MediaProblem, MediaRef
from imrelay.media.fetch import Downloader, Fetched
from imrelay.platforms.wecom_app.config import WeComAppBot
from imrelay.platforms.wecom_app.handle import WeComAppHandle
from imrelay.subjects import kv_key

from ..wecom.delivery import check as _check
from ..wecom.delivery import post_json
from ..wecom.media import APP_NATIVE, file_name, media_get, plan, upload

T = TypeVar("T")

log = logging.getLogger("imrelay.sender.wecom_app")

PLATFORM = "wecom_app"
TEXT_LIMIT_BYTES = 2048


def send_body(
    agent_id: str, touser: str, content: str, fmt: ReplyFormat = ReplyFormat.TEXT
) -> dict[str, Any]:
    kind = "markdown" if fmt is ReplyFormat.MARKDOWN else "text"
    return {
        "touser": touser,
        "msgtype": kind,
        "agentid": int(agent_id) if agent_id.isdigit() else agent_id,
        kind: {"content": content},
        "safe": 0,
        "enable_duplicate_check": 1,
        "duplicate_check_interval": 1800,
    }


def media_body(agent_id: str, touser: str, msgtype: str, media_id: str) -> dict[str, Any]:
    """``message/send`` of an uploaded image, voice, video or file."""
    return {
        "touser": touser,
        "msgtype": msgtype,
        "agentid": int(agent_id) if agent_id.isdigit() else agent_id,
        msgtype: {"media_id": media_id},
        "safe": 0,
    }


@dataclass
class WeComAppDelivery:
    bot_id: str
    corp_id: str
    agent_id: str
    secret: str
    api_base: str
    client: httpx.AsyncClient
    tokens: TokenCache
    timeout: float
    rate_limit_backoff: float = 60.0
    platform: str = PLATFORM
    media_inline: bool = False  # answers' images follow the text as messages of their own

    @classmethod
    def from_bot(cls, bot: WeComAppBot, ctx: DeliveryContext) -> WeComAppDelivery:
        c = bot.credentials
        return cls(
            bot_id=bot.id,
            corp_id=c.corp_id,
            agent_id=c.agent_id,
            secret=c.secret.get_secret_value(),
            api_base=ctx.api_base(bot),
            client=ctx.client,
            tokens=ctx.tokens,
            timeout=ctx.http_timeout,
            rate_limit_backoff=ctx.rate_limit_backoff,
        )

    def __repr__(self) -> str:
        return f"WeComAppDelivery(bot_id={self.bot_id!r}, corp_id={self.corp_id!r}, secret=***)"

    @property
    def token_key(self) -> str:
        return kv_key("wecom", self.corp_id, self.agent_id)

    def render(self, chunk: ReplyChunk) -> list[str]:
        text = chunk.full_text if chunk.full_text is not None else chunk.delta
        return split_utf8(text, TEXT_LIMIT_BYTES) if text.strip() else []

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        touser = WeComAppHandle.of(chunk).touser
        return [("wecom_app.per_user", kv_key(self.corp_id, self.agent_id, touser))]

    async def _fetch_token(self) -> tuple[str, float]:
        async def fetch() -> tuple[str, float]:
            resp = await call(
                self.client,
                "GET",
                f"{self.api_base}/cgi-bin/gettoken",
                platform=PLATFORM,
                bot=self.bot_id,
                http_timeout=self.timeout,
                failure_code="token",
                params={"corpid": self.corp_id, "corpsecret": self.secret},
            )
            payload = resp.json()
            _check(payload, resp.status_code, platform=PLATFORM)
            return str(payload["access_token"]), float(payload.get("expires_in", 7200))

        token = await counted_token_fetch(PLATFORM, self.bot_id, fetch)
        log.info("fetched a WeCom access token for %s (valid %ds)", self.bot_id, int(token[1]))
        return token

    async def _post(self, token: str, body: dict[str, Any]) -> None:
        payload = await post_json(
            self.client,
            f"{self.api_base}/cgi-bin/message/send",
            body,
            params={"access_token": token},
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            rate_limit_backoff=self.rate_limit_backoff,
        )
        if payload.get("invaliduser"):
            log.warning("WeCom reported invalid recipients for bot %s", self.bot_id)

    async def _with_token(self, use: Callable[[str], Awaitable[T]]) -> T:
        # WeCom returns the same token until it expires: fetch at expiry, not ahead of it.
        return await with_token(self.tokens, self.token_key, self._fetch_token, use, renew_early=False)

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        touser = WeComAppHandle.of(chunk).touser
        body = send_body(self.agent_id, touser, part, chunk.format)
        await self._with_token(lambda token: self._post(token, body))

    # ---- media ------------------------------------------------------------------------------------

    async def fetch_media(
        self, inbound: InboundMessage, attachment: Attachment, download: Downloader
    ) -> Fetched:
        """``media/get`` by the message's ``MediaId`` (a picture without one: its ``PicUrl``, guarded)."""
        if not attachment.ref:
            if attachment.kind == MediaKind.IMAGE and attachment.url:
                return await download.url(attachment.url)
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, "no MediaId")
        url = f"{self.api_base}/cgi-bin/media/get"

        async def get(token: str) -> Fetched:
            return await media_get(download, url, {"access_token": token, "media_id": attachment.ref})

        try:
            return await self._with_token(get)
        except UpstreamError as exc:  # the token could not be had, or was refused twice
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, str(exc.code)) from exc

    async def upload(self, msgtype: str, name: str, data: bytes, mime: str) -> str:
        """``media/upload``: the ``media_id`` of ``data`` as ``msgtype`` (image, voice, video, file)."""
        url = f"{self.api_base}/cgi-bin/media/upload"

        async def use(token: str) -> str:
            return await upload(
                self.client,
                url,
                {"access_token": token, "type": msgtype},
                name=name,
                data=data,
                mime=mime,
                platform=PLATFORM,
                bot=self.bot_id,
                http_timeout=self.timeout,
                rate_limit_backoff=self.rate_limit_backoff,
            )

        return await self._with_token(use)

    async def send_media(self, chunk: ReplyChunk, media: MediaRef, data: bytes, index: int) -> None:
        """Upload an answer's image (or file) and send it to the member."""
        msgtype = plan(APP_NATIVE, media.kind, media.mime, len(data))
        media_id = await self.upload(msgtype, file_name(media.name, media.mime), data, media.mime)
        body = media_body(self.agent_id, WeComAppHandle.of(chunk).touser, msgtype, media_id)
        await self._with_token(lambda token: self._post(token, body))
