"""Feishu / Lark delivery: ``tenant_access_token`` (cached cluster-wide, renewed ahead of expiry — Feishu
issues a new token when less than 30 minutes remain) and the message reply API.

Text answers are replied as ``text`` messages, markdown answers as an interactive card with a markdown
element. Every reply carries a ``uuid`` made from the reply id and part, which Feishu uses to drop a
repeated send, so a reply re-posted after a crash still shows once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from imrelay.config import BotConfig, FeishuBot, SenderConfig
from imrelay.errors import (
    PermanentUpstreamError,
    RateLimitedError,
    TokenExpiredError,
    TransientUpstreamError,
    UpstreamError,
)
from imrelay.events import ChatType, ReplyChunk, ReplyFormat
from imrelay.subjects import kv_key
from imrelay.telemetry import TOKEN_REFRESHES

from ..chunking import split_utf8
from ..tokens import TokenCache
from .http import call, json_or_none, retry_after

log = logging.getLogger("imrelay.sender.feishu")

TEXT_LIMIT_BYTES = 30_000  # well under Feishu's request size limit for one message
TOKEN_CODES = {99991661, 99991663, 99991664}
RATE_CODES = {99991400, 230020}
TRANSIENT_CODES = {1500, 1503, 1000004, 1000005}


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
            platform, status, "answer without code")
    if code != 0:
        raise PermanentUpstreamError(platform, code, msg)


def reply_body(part: str, fmt: ReplyFormat, uuid: str) -> dict[str, Any]:
    if fmt is ReplyFormat.MARKDOWN:
        card = {"config": {"wide_screen_mode": True},
                "elements": [{"tag": "markdown", "content": part}]}
        return {"msg_type": "interactive", "content": json.dumps(card, ensure_ascii=False), "uuid": uuid}
    return {"msg_type": "text", "content": json.dumps({"text": part}, ensure_ascii=False), "uuid": uuid}


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
    rate_limit_backoff: float = 60.0

    @classmethod
    def from_bot(cls, bot: BotConfig, api_base: str, client: httpx.AsyncClient, tokens: TokenCache,
                 cfg: SenderConfig) -> FeishuDelivery:
        assert isinstance(bot, FeishuBot)
        c = bot.credentials
        return cls(bot_id=bot.id, platform=bot.platform.value, app_id=c.app_id,
                   app_secret=c.app_secret.get_secret_value(), api_base=api_base, client=client,
                   tokens=tokens, timeout=cfg.http_timeout_seconds,
                   rate_limit_backoff=cfg.rate_limit_backoff_seconds)

    def __repr__(self) -> str:
        return f"FeishuDelivery(bot_id={self.bot_id!r}, app_id={self.app_id!r}, app_secret=***)"

    @property
    def token_key(self) -> str:
        return kv_key(self.platform, self.app_id)

    def render(self, chunk: ReplyChunk) -> list[str]:
        text = chunk.full_text if chunk.full_text is not None else chunk.delta
        return split_utf8(text, TEXT_LIMIT_BYTES) if text.strip() else []

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        return [("feishu.per_app", kv_key(self.platform, self.app_id)),
                ("feishu.per_chat", kv_key(self.platform, self.app_id, chunk.chat.id))]

    async def _fetch_token(self) -> tuple[str, float]:
        try:
            resp = await self.client.post(
                f"{self.api_base}/open-apis/auth/v3/tenant_access_token/internal",
                json={"app_id": self.app_id, "app_secret": self.app_secret}, timeout=self.timeout)
            payload = json_or_none(resp)
            check(self.platform, payload, resp.status_code, retry_after(resp), self.rate_limit_backoff)
            token, expires = str(payload["tenant_access_token"]), float(payload.get("expire", 7200))
        except (httpx.HTTPError, KeyError, TypeError) as exc:
            TOKEN_REFRESHES.labels(platform=self.platform, bot=self.bot_id, outcome="error").inc()
            raise TransientUpstreamError(self.platform, "token", type(exc).__name__) from exc
        except UpstreamError:
            TOKEN_REFRESHES.labels(platform=self.platform, bot=self.bot_id, outcome="error").inc()
            raise
        TOKEN_REFRESHES.labels(platform=self.platform, bot=self.bot_id, outcome="ok").inc()
        return token, expires

    async def _reply(self, token: str, message_id: str, body: dict[str, Any]) -> None:
        resp = await call(self.client, "POST",
                          f"{self.api_base}/open-apis/im/v1/messages/{message_id}/reply",
                          platform=self.platform, bot=self.bot_id, http_timeout=self.timeout,
                          json=body, headers={"Authorization": f"Bearer {token}"})
        check(self.platform, json_or_none(resp), resp.status_code,
              retry_after(resp, "x-ogw-ratelimit-reset"), self.rate_limit_backoff)

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        message_id = chunk.reply_handle.get("message_id")
        if not message_id:
            raise PermanentUpstreamError(self.platform, "no_message", "reply handle lacks message_id")
        # one uuid per reply part: Feishu drops a repeated send with the same uuid
        body = reply_body(part, chunk.format, f"{chunk.reply_id}-{index}"[:50])
        if chunk.chat.type is ChatType.GROUP and index == 0:
            body["reply_in_thread"] = False
        token = await self.tokens.get(self.token_key, self._fetch_token, renew_early=True)
        try:
            await self._reply(token, message_id, body)
        except TokenExpiredError:
            await self.tokens.invalidate(self.token_key, token)
            token = await self.tokens.get(self.token_key, self._fetch_token, renew_early=True)
            await self._reply(token, message_id, body)
