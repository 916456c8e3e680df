"""Discord delivery. Discord counts 2000 *characters* per message; 429 waits the ``retry_after`` Discord
gives.

* An interaction (``/ask``): the deferred response is edited into the answer (``PATCH
  …/webhooks/{application}/{token}/messages/@original``), parts after the first are follow-ups. The
  interaction token lives 15 minutes; after that Discord answers 404 and the reply is dead-lettered.
* A Gateway message (a mention or a DM): the answer is a reply to it (``POST /channels/{channel}/messages``
  with a ``message_reference``, bot token), edited about once a second while it grows (``PATCH
  /channels/{channel}/messages/{id}``); the created message's id is kept in the deliveries bucket so any
  sender replica continues the same message. Every create carries a ``nonce`` made from the reply id and
  part with ``enforce_nonce``, so Discord returns the message already created instead of posting it twice
  (a retry after a lost answer). While a route's ``X-RateLimit-Remaining`` is 0, updates wait for its
  ``X-RateLimit-Reset-After`` instead of drawing a 429.

Media: a message's attachment is fetched from its signed CDN URL through the SSRF guard (no token: the
URL's signature is its credential). An answer's image is a message of its own after the text: a
multipart ``payload_json`` + ``files[0]`` follow-up of the interaction, or a reply in the channel (with a
``nonce`` of its own). Discord's limit per file is 20 MiB unless the interaction said otherwise
(``attachment_size_limit``); 413 / 40005 is "too large".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from imrelay.delivery import DeliveryContext
from imrelay.delivery.chunking import split_chars
from imrelay.delivery.http import call, json_or_none, retry_after, window_closed
from imrelay.errors import PermanentUpstreamError, RateLimitedError, TransientUpstreamError
from imrelay.events import Attachment, InboundMessage, ReplyChunk
from imrelay.media import MediaError, MediaProblem, MediaRef
from imrelay.media.fetch import Downloader, Fetched
from imrelay.platforms.discord.config import DiscordBot
from imrelay.platforms.discord.handle import DiscordHandle
from imrelay.platforms.discord.media import TOO_LARGE, UPLOAD_LIMIT, multipart, upload_check
from imrelay.subjects import kv_key

PLATFORM = "discord"
CHAR_LIMIT = 2000
CURSOR = " ▌"  # shown while the answer is still being written
TOKEN_LIFETIME_SECONDS = 15 * 60
UNKNOWN_MESSAGE = 10008  # the reply being edited was deleted
MAX_QUIET_WAIT = 5.0  # a final part waits at most this long for a route's limit to reset (then a 429 tells)


def nonce(reply_id: str, index: int) -> str:
    """The create's ``nonce`` (at most 25 characters): the same reply part always has the same one."""
    return hashlib.sha256(f"{reply_id}:{index}".encode()).hexdigest()[:25]


def quiet_for(headers: httpx.Headers) -> float:
    """Seconds a route takes no more calls, from Discord's rate-limit headers (0: calls left)."""
    if headers.get("x-ratelimit-remaining") != "0":
        return 0.0
    try:
        return max(float(headers.get("x-ratelimit-reset-after", "0")), 0.0)
    except ValueError:
        return 0.0


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
    media_inline: bool = False  # answers' images follow the text as messages of their own
    update_interval: float = 1.0  # Discord allows about one edit a second
    bot_token: str = field(default="", repr=False)
    streams: KeyValue | None = None  # the deliveries bucket: which message shows a reply
    _messages: dict[str, str] = field(default_factory=dict, repr=False)  # the same, in-process
    _quiet_until: dict[str, float] = field(default_factory=dict, repr=False)  # channel -> monotonic

    @classmethod
    def from_bot(cls, bot: DiscordBot, ctx: DeliveryContext) -> DiscordDelivery:
        return cls(
            bot_id=bot.id,
            application_id=bot.credentials.application_id,
            api_base=ctx.api_base(bot),
            client=ctx.client,
            timeout=ctx.http_timeout,
            bot_token=bot.credentials.bot_token.get_secret_value(),
            streams=ctx.deliveries,
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
        handle = DiscordHandle.of(chunk)
        shown = text + CURSOR
        if len(shown) > CHAR_LIMIT:
            return  # past one message: the final answer adds the follow-ups
        if handle.is_message_reply:
            await self._update_reply(chunk, handle, shown)
            return
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
        handle = DiscordHandle.of(chunk)
        if handle.is_message_reply:
            await self._send_reply(chunk, handle, part, index)
            return
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

    # ---- a reply to a Gateway message --------------------------------------------------------------

    async def _api(self, method: str, path: str, body: dict[str, Any], channel: str, **request: Any) -> Any:
        """A bot-token call; ``request`` (form ``data`` and ``files``) replaces the JSON ``body``."""
        resp = await call(
            self.client,
            method,
            f"{self.api_base}/api/v10{path}",
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            **(request or {"json": body}),
            headers={"Authorization": f"Bot {self.bot_token}"},
        )
        payload = json_or_none(resp)
        quiet = quiet_for(resp.headers)
        if quiet or resp.status_code == 429:
            wait = quiet or float(
                (payload or {}).get("retry_after", 1.0) if isinstance(payload, dict) else 1.0
            )
            self._quiet_until[channel] = time.monotonic() + wait
        check(payload, resp.status_code, retry_after(resp))
        return payload

    def _quiet(self, channel: str) -> float:
        return max(0.0, self._quiet_until.get(channel, 0.0) - time.monotonic())

    async def _shown_in(self, chunk: ReplyChunk) -> str:
        """The id of the message showing this reply, if one was created."""
        if chunk.reply_id in self._messages or self.streams is None:
            return self._messages.get(chunk.reply_id, "")
        try:
            entry = await self.streams.get(kv_key("stream", chunk.reply_id))
            found = str(json.loads(entry.value or b"{}").get("message_id", ""))
        except KeyNotFoundError:
            return ""
        if found:
            self._messages[chunk.reply_id] = found
        return found

    async def _remember(self, chunk: ReplyChunk, message_id: str) -> None:
        self._messages[chunk.reply_id] = message_id
        if len(self._messages) > 10_000:
            for stale in list(self._messages)[:1000]:
                del self._messages[stale]
        if self.streams is not None:
            await self.streams.put(
                kv_key("stream", chunk.reply_id), json.dumps({"message_id": message_id}).encode()
            )

    async def _create(
        self, chunk: ReplyChunk, handle: DiscordHandle, content: str, index: int
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "content": content,
            "allowed_mentions": {"parse": [], "replied_user": False},
            "nonce": nonce(chunk.reply_id, index),
            "enforce_nonce": True,  # the same part posted again returns the message already created
            # every part replies to the question; if it was deleted, answer in the channel anyway
            "message_reference": {
                "message_id": handle.message_id,
                "channel_id": handle.channel_id,
                "fail_if_not_exists": False,
            },
        }
        created = await self._api("POST", f"/channels/{handle.channel_id}/messages", body, handle.channel_id)
        if not isinstance(created, dict) or not created.get("id"):
            raise TransientUpstreamError(PLATFORM, "no_id", "created message without an id")
        return created

    async def _edit(self, handle: DiscordHandle, message_id: str, content: str) -> None:
        await self._api(
            "PATCH",
            f"/channels/{handle.channel_id}/messages/{message_id}",
            {"content": content, "allowed_mentions": {"parse": [], "replied_user": False}},
            handle.channel_id,
        )

    async def _update_reply(self, chunk: ReplyChunk, handle: DiscordHandle, shown: str) -> None:
        if self._quiet(handle.channel_id):
            return  # the channel's limit is spent: the next update (or the final) shows the text
        message_id = await self._shown_in(chunk)
        if message_id:
            await self._edit(handle, message_id, shown)
            return
        created = await self._create(chunk, handle, shown, 0)
        await self._remember(chunk, str(created["id"]))

    async def _send_reply(self, chunk: ReplyChunk, handle: DiscordHandle, part: str, index: int) -> None:
        wait = self._quiet(handle.channel_id)
        if wait:
            await asyncio.sleep(min(wait, MAX_QUIET_WAIT))
        if index == 0:
            message_id = await self._shown_in(chunk)
            if message_id:
                try:
                    await self._edit(handle, message_id, part)
                    return
                except PermanentUpstreamError as exc:
                    if exc.code != UNKNOWN_MESSAGE:
                        raise
                    # the streamed reply was deleted meanwhile: post the answer anew
        created = await self._create(chunk, handle, part, index)
        if created.get("content") != part:  # Discord returned the streamed message (same nonce)
            await self._edit(handle, str(created["id"]), part)

    # ---- media ------------------------------------------------------------------------------------

    async def fetch_media(
        self, inbound: InboundMessage, attachment: Attachment, download: Downloader
    ) -> Fetched:
        """An attachment from its signed CDN URL, through the guard (the bot token is not sent)."""
        return await download.first_url(attachment.url, attachment.ref)

    async def send_media(self, chunk: ReplyChunk, media: MediaRef, data: bytes, index: int) -> None:
        handle = DiscordHandle.of(chunk)
        upload_check(media, len(data), handle.attachment_size_limit or UPLOAD_LIMIT)
        try:
            if handle.is_message_reply:
                await self._send_file_reply(chunk, handle, media, data, index)
            else:
                await self._send_file_followup(chunk, media, data)
        except PermanentUpstreamError as exc:
            if exc.code in (TOO_LARGE, 413):
                raise MediaError(MediaProblem.OVERSIZE, str(exc.code)) from exc
            raise

    async def _send_file_followup(self, chunk: ReplyChunk, media: MediaRef, data: bytes) -> None:
        form, files = multipart({"allowed_mentions": {"parse": []}}, media, data)
        resp = await call(
            self.client,
            "POST",
            self._base(chunk),
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            data=form,
            files=files,
        )
        check(json_or_none(resp), resp.status_code, retry_after(resp))

    async def _send_file_reply(
        self, chunk: ReplyChunk, handle: DiscordHandle, media: MediaRef, data: bytes, index: int
    ) -> None:
        wait = self._quiet(handle.channel_id)
        if wait:
            await asyncio.sleep(min(wait, MAX_QUIET_WAIT))
        payload = {
            "allowed_mentions": {"parse": [], "replied_user": False},
            "nonce": nonce(chunk.reply_id, index),
            "enforce_nonce": True,  # a retry after a lost answer does not post the image twice
            "message_reference": {
                "message_id": handle.message_id,
                "channel_id": handle.channel_id,
                "fail_if_not_exists": False,
            },
        }
        form, files = multipart(payload, media, data)
        await self._api(
            "POST", f"/channels/{handle.channel_id}/messages", {}, handle.channel_id, data=form, files=files
        )
