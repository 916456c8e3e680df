"""WeCom group robot (群机器人) delivery: the answer goes to the ``WebhookUrl`` that came with the message.

No access token: the webhook key is the credential, so it is never logged. Text content is limited to 2048
bytes; in group chats the first part @-mentions the asker. The robot's limit is 20 messages a minute; a
45009 answer is backed off and retried.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from imrelay.delivery import DeliveryContext
from imrelay.delivery.chunking import split_utf8
from imrelay.errors import PermanentUpstreamError
from imrelay.events import ChatType, ReplyChunk, ReplyFormat
from imrelay.platforms.wecom_group_robot.config import WeComGroupRobotBot
from imrelay.platforms.wecom_group_robot.handle import WeComGroupRobotHandle

from ..wecom.delivery import post_json

PLATFORM = "wecom_group_robot"
TEXT_LIMIT_BYTES = 2048
MARKDOWN_LIMIT_BYTES = 4096
WEBHOOK_PATH = "/cgi-bin/webhook/send"


def send_body(content: str, mention: str | None, fmt: ReplyFormat = ReplyFormat.TEXT) -> dict[str, Any]:
    if fmt is ReplyFormat.MARKDOWN:  # markdown mentions inline
        return {
            "msgtype": "markdown",
            "markdown": {"content": (f"<@{mention}> " if mention else "") + content},
        }
    text: dict[str, Any] = {"content": content}
    if mention:
        text["mentioned_list"] = [mention]
    return {"msgtype": "text", "text": text}


def webhook_allowed(url: str, api_base: str) -> bool:
    """Only post to the robot webhook of the platform this bot talks to (never to an arbitrary URL)."""
    u, base = urlsplit(url), urlsplit(api_base)
    return (u.scheme, u.netloc) == (base.scheme, base.netloc) and u.path == WEBHOOK_PATH and "key=" in u.query


@dataclass
class WeComGroupRobotDelivery:
    bot_id: str
    api_base: str
    client: httpx.AsyncClient
    timeout: float
    rate_limit_backoff: float = 60.0
    platform: str = PLATFORM

    @classmethod
    def from_bot(cls, bot: WeComGroupRobotBot, ctx: DeliveryContext) -> WeComGroupRobotDelivery:
        return cls(
            bot_id=bot.id,
            api_base=ctx.api_base(bot),
            client=ctx.client,
            timeout=ctx.http_timeout,
            rate_limit_backoff=ctx.rate_limit_backoff,
        )

    def render(self, chunk: ReplyChunk) -> list[str]:
        text = chunk.full_text if chunk.full_text is not None else chunk.delta
        limit = MARKDOWN_LIMIT_BYTES if chunk.format is ReplyFormat.MARKDOWN else TEXT_LIMIT_BYTES
        # room for the mention that opens the first part
        return split_utf8(text, limit - 80) if text.strip() else []

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        # keyed by a digest: the webhook key is a credential and KV key names are visible to operators
        url = WeComGroupRobotHandle.of(chunk).webhook_url
        return [("wecom_group_robot.per_webhook", hashlib.sha256(url.encode()).hexdigest()[:32])]

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        url = WeComGroupRobotHandle.of(chunk).webhook_url
        if not webhook_allowed(url, self.api_base):
            raise PermanentUpstreamError(
                PLATFORM, "bad_webhook", "the message carried no usable robot webhook URL"
            )
        mention = chunk.recipient.id if chunk.chat.type is ChatType.GROUP and index == 0 else None
        await post_json(
            self.client,
            url,
            send_body(part, mention, chunk.format),
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            rate_limit_backoff=self.rate_limit_backoff,
        )
