"""QQ bot delivery: passive replies only (QQ withdrew proactive messages), each carrying the inbound
``msg_id`` and a ``msg_seq`` (1, 2, … per part; QQ refuses a repeated pair, so a re-post is not shown
twice). QQ allows five replies per message — a longer answer is cut to five parts, the last one saying so —
within 5 minutes in groups and channels, 60 minutes one-to-one. ``Authorization: QQBot <token>``, the token
from ``{auth_base}/app/getAppAccessToken``.
"""

from __future__ import annotations

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
from imrelay.events import ReplyChunk
from imrelay.platforms.qq.config import QQBot
from imrelay.platforms.qq.handle import QQHandle
from imrelay.subjects import kv_key

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
    if status >= 500:
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
        return cap(split_utf8(text, TEXT_LIMIT_BYTES), TEXT_LIMIT_BYTES) if text.strip() else []

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

    async def _post(self, token: str, url: str, body: dict[str, Any]) -> None:
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
        check(json_or_none(resp), resp.status_code, retry_after(resp), self.rate_limit_backoff)

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        h = QQHandle.of(chunk)
        path = PATHS[h.target_kind]
        if not h.msg_id:
            raise PermanentUpstreamError(PLATFORM, "no_handle", "reply handle lacks msg_id")
        if window_closed(chunk, REPLY_WINDOW_SECONDS.get(h.target_kind, 300)):
            raise PermanentUpstreamError(
                PLATFORM, "window_closed", "QQ no longer accepts replies to this message"
            )
        url = self.api_base + path.format(target=h.target, guild=h.guild_id)
        body = {"content": part, "msg_type": 0, "msg_id": h.msg_id, "msg_seq": index + 1}
        await with_token(
            self.tokens,
            kv_key(PLATFORM, self.app_id),
            self._fetch_token,
            lambda token: self._post(token, url, body),
            renew_early=True,
        )
