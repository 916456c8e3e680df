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
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

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
)
from imrelay.events import ChatType, ReplyChunk, ReplyFormat
from imrelay.platforms.feishu.config import FeishuBot
from imrelay.platforms.feishu.handle import FeishuHandle
from imrelay.subjects import kv_key

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
        )

    def __repr__(self) -> str:
        return f"FeishuDelivery(bot_id={self.bot_id!r}, app_id={self.app_id!r}, app_secret=***)"

    @property
    def token_key(self) -> str:
        return kv_key(self.platform, self.app_id)

    def render(self, chunk: ReplyChunk) -> list[str]:
        text = chunk.full_text if chunk.full_text is not None else chunk.delta
        return split_utf8(text, TEXT_LIMIT_BYTES) if text.strip() else []

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

    async def _api(self, method: str, path: str, body: dict[str, Any]) -> Any:
        """One authorized Feishu API call (refreshing the token once if Feishu says it is invalid)."""

        async def use(token: str) -> Any:
            resp = await call(
                self.client,
                method,
                f"{self.api_base}{path}",
                platform=self.platform,
                bot=self.bot_id,
                http_timeout=self.timeout,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
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

    async def _finish_card(self, chunk: ReplyChunk, card_id: str, text: str) -> None:
        base = f"/open-apis/cardkit/v1/cards/{card_id}"
        await self._api(
            "PUT", f"{base}/elements/{ELEMENT}/content", {"content": text, "sequence": chunk.seq + 1}
        )
        await self._api(
            "PATCH",
            f"{base}/settings",
            {"settings": json.dumps({"config": {"streaming_mode": False}}), "sequence": chunk.seq + 2},
        )

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        message_id = FeishuHandle.of(chunk).message_id
        if not message_id:
            raise PermanentUpstreamError(self.platform, "no_message", "reply handle lacks message_id")
        if index == 0 and self.streams is not None:
            state, _ = await self._stream_state(chunk)
            if state.get("card_id") and state.get("replied"):
                await self._finish_card(chunk, str(state["card_id"]), part)
                return
        # one uuid per reply part: Feishu drops a repeated send with the same uuid
        body = reply_body(part, chunk.format, f"{chunk.reply_id}-{index}"[:50])
        if chunk.chat.type is ChatType.GROUP and index == 0:
            body["reply_in_thread"] = False
        await self._api("POST", f"/open-apis/im/v1/messages/{message_id}/reply", body)
