"""Delivery, one module per platform: render a final reply into parts and send one part.

A delivery raises the :mod:`imrelay.errors` upstream tree: ``TransientUpstreamError`` and
``RateLimitedError`` are retried with backoff, ``PermanentUpstreamError`` goes to the dead-letter subject.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import httpx
from nats.js.kv import KeyValue

from imrelay.aibot_streams import StreamStore
from imrelay.config import BotConfig, Platform, SenderConfig, Settings
from imrelay.events import ReplyChunk

from ..tokens import TokenCache


class Delivery(Protocol):
    platform: str
    bot_id: str

    def render(self, chunk: ReplyChunk) -> list[str]:
        """The messages to post for a final chunk, in order."""
        ...

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        """The platform limits one message of this reply counts against: ``(scope, subject key)``."""
        ...

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None: ...


@runtime_checkable
class StreamingDelivery(Delivery, Protocol):
    """A platform that can show an answer while it grows (editing a message or a card)."""

    update_interval: float  # seconds between two updates of one answer (the platform's edit limit)

    async def update(self, chunk: ReplyChunk, text: str) -> None:
        """Show ``text``, the answer so far. Best effort: the final chunk always shows the whole answer."""
        ...


Requester = Callable[[str, bytes, float], Awaitable[bytes]]


def delivery_for(bot: BotConfig, settings: Settings, client: httpx.AsyncClient,
                 tokens: TokenCache, cfg: SenderConfig, streams: KeyValue,
                 aibot_streams: StreamStore, requester: Requester | None = None) -> Delivery:
    from .dingtalk import DingTalkDelivery
    from .discord import DiscordDelivery
    from .feishu import FeishuDelivery
    from .qq import QQDelivery
    from .wecom_aibot import WeComAIBotDelivery
    from .wecom_app import WeComAppDelivery
    from .wecom_group_robot import WeComGroupRobotDelivery

    api = settings.api_base(bot)
    if bot.platform is Platform.WECOM_APP:
        return WeComAppDelivery.from_bot(bot, api, client, tokens, cfg)
    if bot.platform is Platform.WECOM_GROUP_ROBOT:
        return WeComGroupRobotDelivery.from_bot(bot, api, client, cfg)
    if bot.platform is Platform.WECOM_AIBOT:
        return WeComAIBotDelivery.from_bot(bot, aibot_streams, client, cfg, requester, streams)
    if bot.platform in (Platform.FEISHU, Platform.LARK):
        return FeishuDelivery.from_bot(bot, api, client, tokens, cfg, streams)
    if bot.platform is Platform.DINGTALK:
        return DingTalkDelivery.from_bot(bot, api, client, tokens, cfg)
    if bot.platform is Platform.QQ:
        return QQDelivery.from_bot(bot, api, settings.auth_base(bot), client, tokens, cfg)
    if bot.platform is Platform.DISCORD:
        return DiscordDelivery.from_bot(bot, api, client, cfg)
    raise ValueError(f"platform {bot.platform.value!r} is not supported by this sender yet")
