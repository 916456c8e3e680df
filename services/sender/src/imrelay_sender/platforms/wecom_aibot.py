"""WeCom AI bot delivery.

* Callback mode: the answer is written into the message's stream record, which the ingress serves to
  WeCom's refresh polls — growing while the model writes, ``finish`` with the whole answer. Past the
  stream's 20480 bytes the rest goes out through the message's ``response_url``.
* Long-connection mode: the same stream updates are sent as NATS requests to the connector replica that
  owns the bot's socket (``imrelay.conn.wecom_aibot.<bot>``), which sends them on the socket and answers
  once WeCom acknowledged; no owner (a takeover in progress) is a transient failure, retried.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from imrelay import subjects
from imrelay.aibot_streams import CONTENT_LIMIT_BYTES, StreamStore
from imrelay.config import BotConfig, SenderConfig, WeComAIBot
from imrelay.errors import PermanentUpstreamError, TransientUpstreamError
from imrelay.events import ReplyChunk

from ..chunking import split_utf8
from .wecom import post_json

PLATFORM = "wecom_aibot"
Requester = Callable[[str, bytes, float], Awaitable[bytes]]


@dataclass
class WeComAIBotDelivery:
    bot_id: str
    streams: StreamStore
    client: httpx.AsyncClient
    timeout: float
    platform: str = PLATFORM
    update_interval: float = 0.3  # WeCom polls about once a second; fresher is not seen
    requester: Requester | None = None  # set for long-connection bots

    @classmethod
    def from_bot(cls, bot: BotConfig, streams: StreamStore, client: httpx.AsyncClient,
                 cfg: SenderConfig, requester: Requester | None = None) -> WeComAIBotDelivery:
        assert isinstance(bot, WeComAIBot)
        return cls(bot_id=bot.id, streams=streams, client=client, timeout=cfg.http_timeout_seconds,
                   requester=requester if bot.mode == "long_connection" else None)

    async def _via_connector(self, chunk: ReplyChunk, content: str, finish: bool) -> None:
        assert self.requester is not None
        body = json.dumps({"req_id": chunk.reply_handle.get("req_id", ""), "stream_id": self._sid(chunk),
                           "content": content, "finish": finish,
                           "chatid": chunk.reply_handle.get("chatid", chunk.recipient.id)}).encode()
        try:
            answer = json.loads(await self.requester(
                subjects.connector_subject(PLATFORM, self.bot_id), body, self.timeout))
        except Exception as exc:
            raise TransientUpstreamError(PLATFORM, "connector", type(exc).__name__) from exc
        if not answer.get("ok"):
            raise TransientUpstreamError(PLATFORM, str(answer.get("code")), "not accepted on the socket")

    def render(self, chunk: ReplyChunk) -> list[str]:
        text = chunk.full_text if chunk.full_text is not None else chunk.delta
        return split_utf8(text, CONTENT_LIMIT_BYTES) if text.strip() else [""]

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        return []

    def _sid(self, chunk: ReplyChunk) -> str:
        sid = chunk.reply_handle.get("stream_id")
        if not sid:
            raise PermanentUpstreamError(PLATFORM, "no_stream", "reply handle lacks the stream id")
        return sid

    async def update(self, chunk: ReplyChunk, text: str) -> None:
        if self.requester is not None:
            await self._via_connector(chunk, text, False)
            return
        await self.streams.put(self.bot_id, self._sid(chunk), text, False)

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        if self.requester is not None:
            if index == 0:
                await self._via_connector(chunk, part, True)
            return  # one stream per message on the socket: the first 20480 bytes
        if index == 0:
            await self.streams.put(self.bot_id, self._sid(chunk), part, True)
            return
        url = chunk.reply_handle.get("response_url")
        if not url:
            raise PermanentUpstreamError(PLATFORM, "too_long", "answer exceeds the stream and no "
                                         "response_url came with the message")
        await post_json(self.client, url, {"msgtype": "markdown", "markdown": {"content": part}},
                        platform=PLATFORM, bot=self.bot_id, http_timeout=self.timeout)
