"""WeCom self-built app delivery: ``gettoken`` (cached cluster-wide) and ``message/send`` text messages.

Text content is limited to 2048 bytes, so longer answers are split on character boundaries and sent in
order. ``enable_duplicate_check`` asks WeCom to drop an identical message resent within 30 minutes, a second
net under the sender's own delivery records.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from imrelay.config import BotConfig, SenderConfig, WeComAppBot
from imrelay.errors import (
    PermanentUpstreamError,
    RateLimitedError,
    TokenExpiredError,
    TransientUpstreamError,
    UpstreamError,
    WeComCode,
)
from imrelay.events import ReplyChunk
from imrelay.subjects import kv_key
from imrelay.telemetry import DELIVERY_SECONDS, TOKEN_REFRESHES

from ..chunking import split_utf8
from ..tokens import TokenCache

log = logging.getLogger("imrelay.sender.wecom_app")

PLATFORM = "wecom_app"
TEXT_LIMIT_BYTES = 2048
TOKEN_CODES = {40014, 42001, 42007, 42009}
TRANSIENT_CODES = {WeComCode.SYSTEM_BUSY}


def send_body(agent_id: str, touser: str, content: str) -> dict[str, Any]:
    return {
        "touser": touser, "msgtype": "text", "agentid": int(agent_id) if agent_id.isdigit() else agent_id,
        "text": {"content": content}, "safe": 0,
        "enable_duplicate_check": 1, "duplicate_check_interval": 1800,
    }


def check(payload: Any, status: int, rate_limit_backoff: float = 60.0) -> None:
    """Raise the upstream error an API answer stands for (nothing for errcode 0)."""
    if status >= 500:
        raise TransientUpstreamError(PLATFORM, status, "server error")
    if not isinstance(payload, dict) or "errcode" not in payload:
        if status >= 400:
            raise PermanentUpstreamError(PLATFORM, status, "unexpected HTTP status")
        raise TransientUpstreamError(PLATFORM, "bad_response", "answer without errcode")
    code = payload.get("errcode")
    msg = str(payload.get("errmsg", ""))[:200]
    if code == 0:
        return
    if not isinstance(code, int):
        raise TransientUpstreamError(PLATFORM, str(code), msg)
    if code in TOKEN_CODES:
        raise TokenExpiredError(PLATFORM, code, msg)
    if code == WeComCode.API_FREQ_OUT_OF_LIMIT:
        raise RateLimitedError(PLATFORM, code, msg, retry_after=rate_limit_backoff)
    if code in TRANSIENT_CODES:
        raise TransientUpstreamError(PLATFORM, code, msg)
    raise PermanentUpstreamError(PLATFORM, code, msg)


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

    @classmethod
    def from_bot(cls, bot: BotConfig, api_base: str, client: httpx.AsyncClient, tokens: TokenCache,
                 cfg: SenderConfig) -> WeComAppDelivery:
        assert isinstance(bot, WeComAppBot)
        c = bot.credentials
        return cls(bot_id=bot.id, corp_id=c.corp_id, agent_id=c.agent_id,
                   secret=c.secret.get_secret_value(), api_base=api_base, client=client,
                   tokens=tokens, timeout=cfg.http_timeout_seconds,
                   rate_limit_backoff=cfg.rate_limit_backoff_seconds)

    def __repr__(self) -> str:
        return f"WeComAppDelivery(bot_id={self.bot_id!r}, corp_id={self.corp_id!r}, secret=***)"

    @property
    def token_key(self) -> str:
        return kv_key("wecom", self.corp_id, self.agent_id)

    def render(self, chunk: ReplyChunk) -> list[str]:
        text = chunk.full_text if chunk.full_text is not None else chunk.delta
        return split_utf8(text, TEXT_LIMIT_BYTES) if text.strip() else []

    async def _fetch_token(self) -> tuple[str, float]:
        try:
            resp = await self.client.get(
                f"{self.api_base}/cgi-bin/gettoken",
                params={"corpid": self.corp_id, "corpsecret": self.secret}, timeout=self.timeout)
            payload = resp.json()
            check(payload, resp.status_code)
            token, expires_in = str(payload["access_token"]), float(payload.get("expires_in", 7200))
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            TOKEN_REFRESHES.labels(platform=PLATFORM, bot=self.bot_id, outcome="error").inc()
            raise TransientUpstreamError(PLATFORM, "gettoken", type(exc).__name__) from exc
        except UpstreamError:
            TOKEN_REFRESHES.labels(platform=PLATFORM, bot=self.bot_id, outcome="error").inc()
            raise
        TOKEN_REFRESHES.labels(platform=PLATFORM, bot=self.bot_id, outcome="ok").inc()
        log.info("fetched a WeCom access token for %s (valid %ds)", self.bot_id, int(expires_in))
        return token, expires_in

    async def _post(self, token: str, body: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            resp = await self.client.post(f"{self.api_base}/cgi-bin/message/send",
                                          params={"access_token": token}, json=body,
                                          timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise TransientUpstreamError(PLATFORM, "http", type(exc).__name__) from exc
        finally:
            DELIVERY_SECONDS.labels(platform=PLATFORM, bot=self.bot_id).observe(
                time.perf_counter() - started)
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        check(payload, resp.status_code, self.rate_limit_backoff)
        if isinstance(payload, dict) and payload.get("invaliduser"):
            log.warning("WeCom reported invalid recipients for bot %s", self.bot_id)

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        touser = chunk.reply_handle.get("touser") or chunk.recipient.id
        body = send_body(self.agent_id, touser, part)
        token = await self.tokens.get(self.token_key, self._fetch_token)
        try:
            await self._post(token, body)
        except TokenExpiredError:
            # The platform dropped the token early: forget it cluster-wide, fetch once, retry once.
            await self.tokens.invalidate(self.token_key, token)
            token = await self.tokens.get(self.token_key, self._fetch_token)
            await self._post(token, body)
