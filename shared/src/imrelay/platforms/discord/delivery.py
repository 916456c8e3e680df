"""Discord delivery: the deferred interaction response is edited into the answer (``PATCH
…/webhooks/{application}/{token}/messages/@original``), parts after the first are follow-ups. Discord
counts 2000 *characters* per message. The interaction token lives 15 minutes; after that Discord answers
404 and the reply is dead-lettered. 429 waits the ``retry_after`` Discord gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from imrelay.delivery import DeliveryContext
from imrelay.delivery.chunking import split_chars
from imrelay.delivery.http import call, json_or_none, retry_after, window_closed
from imrelay.errors import PermanentUpstreamError, RateLimitedError, TransientUpstreamError
from imrelay.events import ReplyChunk
from imrelay.platforms.discord.config import DiscordBot
from imrelay.platforms.discord.handle import DiscordHandle

PLATFORM = "discord"
CHAR_LIMIT = 2000
CURSOR = " ▌"  # shown while the answer is still being written
TOKEN_LIFETIME_SECONDS = 15 * 60


def check(payload: Any, status: int, wait: float | None) -> None:
    if status < 300:
        return
    message = str(payload.get("message", ""))[:200] if isinstance(payload, dict) else ""
    code = payload.get("code", status) if isinstance(payload, dict) else status
    if status == 429:
        body_wait = payload.get("retry_after") if isinstance(payload, dict) else None
        raise RateLimitedError(
            PLATFORM, code, message, retry_after=float(body_wait) if body_wait is not None else (wait or 1.0)
        )
    if status >= 500:
        raise TransientUpstreamError(PLATFORM, code, message or "server error")
    raise PermanentUpstreamError(PLATFORM, code, message)


@dataclass
class DiscordDelivery:
    bot_id: str
    application_id: str
    api_base: str
    client: httpx.AsyncClient
    timeout: float
    platform: str = PLATFORM
    update_interval: float = 1.0  # Discord allows about one edit a second

    @classmethod
    def from_bot(cls, bot: DiscordBot, ctx: DeliveryContext) -> DiscordDelivery:
        return cls(
            bot_id=bot.id,
            application_id=bot.credentials.application_id,
            api_base=ctx.api_base(bot),
            client=ctx.client,
            timeout=ctx.http_timeout,
        )

    def render(self, chunk: ReplyChunk) -> list[str]:
        text = chunk.full_text if chunk.full_text is not None else chunk.delta
        return split_chars(text, CHAR_LIMIT) if text.strip() else []

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        return []  # Discord announces its per-route limits in answers; 429s are waited out

    def _base(self, chunk: ReplyChunk) -> str:
        handle = DiscordHandle.of(chunk)
        app, token = handle.application_id or self.application_id, handle.interaction_token
        if not token:
            raise PermanentUpstreamError(PLATFORM, "no_token", "reply handle lacks the interaction token")
        if window_closed(chunk, TOKEN_LIFETIME_SECONDS):
            raise PermanentUpstreamError(
                PLATFORM, "token_expired", "the interaction token has expired (15 minutes)"
            )
        return f"{self.api_base}/api/v10/webhooks/{app}/{token}"

    async def update(self, chunk: ReplyChunk, text: str) -> None:
        shown = text + CURSOR
        if len(shown) > CHAR_LIMIT:
            return  # past one message: the final answer adds the follow-ups
        resp = await call(
            self.client,
            "PATCH",
            f"{self._base(chunk)}/messages/@original",
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            json={"content": shown, "allowed_mentions": {"parse": []}},
        )
        check(json_or_none(resp), resp.status_code, retry_after(resp))

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        base = self._base(chunk)
        body = {"content": part, "allowed_mentions": {"parse": []}}
        if index == 0:
            resp = await call(
                self.client,
                "PATCH",
                f"{base}/messages/@original",
                platform=PLATFORM,
                bot=self.bot_id,
                http_timeout=self.timeout,
                json=body,
            )
        else:
            resp = await call(
                self.client,
                "POST",
                base,
                platform=PLATFORM,
                bot=self.bot_id,
                http_timeout=self.timeout,
                json=body,
            )
        check(json_or_none(resp), resp.status_code, retry_after(resp))
