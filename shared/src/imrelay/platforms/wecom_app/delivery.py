"""WeCom self-built app delivery: ``gettoken`` (cached cluster-wide) and ``message/send`` text messages.

Text content is limited to 2048 bytes, so longer answers are split on character boundaries and sent in
order. ``enable_duplicate_check`` asks WeCom to drop an identical message resent within 30 minutes, a second
net under the sender's own delivery records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from imrelay.delivery import DeliveryContext
from imrelay.delivery.chunking import split_utf8
from imrelay.delivery.http import call, counted_token_fetch, with_token
from imrelay.delivery.tokens import TokenCache
from imrelay.events import ReplyChunk, ReplyFormat
from imrelay.platforms.wecom_app.config import WeComAppBot
from imrelay.platforms.wecom_app.handle import WeComAppHandle
from imrelay.subjects import kv_key

from ..wecom.delivery import check as _check
from ..wecom.delivery import post_json

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

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        touser = WeComAppHandle.of(chunk).touser
        body = send_body(self.agent_id, touser, part, chunk.format)
        # WeCom returns the same token until it expires: fetch at expiry, not ahead of it.
        await with_token(
            self.tokens,
            self.token_key,
            self._fetch_token,
            lambda token: self._post(token, body),
            renew_early=False,
        )
