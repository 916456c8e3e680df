"""WeCom AI bot delivery in callback mode: the answer is written into the message's stream record, which
the ingress serves to WeCom's refresh polls — growing while the model writes, ``finish`` with the whole
answer. Past the stream's 20480 bytes the rest goes out through the message's ``response_url``."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from imrelay.aibot_streams import CONTENT_LIMIT_BYTES, StreamStore
from imrelay.config import BotConfig, SenderConfig, WeComAIBot
from imrelay.errors import PermanentUpstreamError
from imrelay.events import ReplyChunk

from ..chunking import split_utf8
from .wecom import post_json

PLATFORM = "wecom_aibot"


@dataclass
class WeComAIBotDelivery:
    bot_id: str
    streams: StreamStore
    client: httpx.AsyncClient
    timeout: float
    platform: str = PLATFORM
    update_interval: float = 0.3  # WeCom polls about once a second; fresher is not seen

    @classmethod
    def from_bot(cls, bot: BotConfig, streams: StreamStore, client: httpx.AsyncClient,
                 cfg: SenderConfig) -> WeComAIBotDelivery:
        assert isinstance(bot, WeComAIBot)
        return cls(bot_id=bot.id, streams=streams, client=client, timeout=cfg.http_timeout_seconds)

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
        await self.streams.put(self.bot_id, self._sid(chunk), text, False)

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        if index == 0:
            await self.streams.put(self.bot_id, self._sid(chunk), part, True)
            return
        url = chunk.reply_handle.get("response_url")
        if not url:
            raise PermanentUpstreamError(PLATFORM, "too_long", "answer exceeds the stream and no "
                                         "response_url came with the message")
        await post_json(self.client, url, {"msgtype": "markdown", "markdown": {"content": part}},
                        platform=PLATFORM, bot=self.bot_id, http_timeout=self.timeout)
