"""WeCom group robot (群机器人) delivery: the answer goes to the ``WebhookUrl`` that came with the message.

No access token: the webhook key is the credential, so it is never logged. Text content is limited to 2048
bytes; in group chats the first part @-mentions the asker. The robot's limit is 20 messages a minute; a
45009 answer is backed off and retried.

Media: a message's picture comes as a URL, fetched through the address guard. An answer's image goes to
the webhook inline (``msgtype: image``, base64 and md5 of the bytes) when it is a JPG/PNG up to 2 MB;
otherwise it is uploaded with ``webhook/upload_media?key&type=file`` and sent as a file (up to 20 MB).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from imrelay.delivery import DeliveryContext
from imrelay.delivery.chunking import split_utf8
from imrelay.errors import PermanentUpstreamError
from imrelay.events import Attachment, ChatType, InboundMessage, ReplyChunk, ReplyFormat
from imrelay.media import MediaRef
from imrelay.media.fetch import Downloader, Fetched
from imrelay.platforms.wecom_group_robot.config import WeComGroupRobotBot
from imrelay.platforms.wecom_group_robot.handle import WeComGroupRobotHandle

from ..wecom.delivery import post_json
from ..wecom.media import ROBOT_NATIVE, file_name, plan, upload

PLATFORM = "wecom_group_robot"
TEXT_LIMIT_BYTES = 2048
MARKDOWN_LIMIT_BYTES = 4096
WEBHOOK_PATH = "/cgi-bin/webhook/send"
UPLOAD_PATH = "/cgi-bin/webhook/upload_media"


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


def image_body(data: bytes) -> dict[str, Any]:
    """An image message: the bytes in base64 and their md5."""
    return {
        "msgtype": "image",
        "image": {
            "base64": base64.b64encode(data).decode("ascii"),
            "md5": hashlib.md5(data).hexdigest(),  # noqa: S324 - WeCom's own checksum
        },
    }


def media_body(msgtype: str, media_id: str) -> dict[str, Any]:
    """A file or voice message of an uploaded ``media_id``."""
    return {"msgtype": msgtype, msgtype: {"media_id": media_id}}


def upload_url(webhook_url: str, api_base: str) -> tuple[str, dict[str, str]]:
    """(URL, query) of ``webhook/upload_media`` for the robot of ``webhook_url`` (its ``key``)."""
    key = parse_qs(urlsplit(webhook_url).query).get("key", [""])[0]
    return f"{api_base.rstrip('/')}{UPLOAD_PATH}", {"key": key}


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
    media_inline: bool = False  # answers' images follow the text as messages of their own

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

    def _webhook(self, chunk: ReplyChunk) -> str:
        url = WeComGroupRobotHandle.of(chunk).webhook_url
        if not webhook_allowed(url, self.api_base):
            raise PermanentUpstreamError(
                PLATFORM, "bad_webhook", "the message carried no usable robot webhook URL"
            )
        return url

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        url = self._webhook(chunk)
        mention = chunk.recipient.id if chunk.chat.type is ChatType.GROUP and index == 0 else None
        await self._post(url, send_body(part, mention, chunk.format))

    # ---- media ------------------------------------------------------------------------------------

    async def fetch_media(
        self, inbound: InboundMessage, attachment: Attachment, download: Downloader
    ) -> Fetched:
        """A message's picture: its URL, through the address guard."""
        return await download.first_url(attachment.url, attachment.ref)

    async def send_media(self, chunk: ReplyChunk, media: MediaRef, data: bytes, index: int) -> None:
        """An answer's image inline (JPG/PNG up to 2 MB), anything else uploaded and sent as a file."""
        url = self._webhook(chunk)
        msgtype = plan(ROBOT_NATIVE, media.kind, media.mime, len(data))
        if msgtype == "image":
            await self._post(url, image_body(data))
            return
        target, query = upload_url(url, self.api_base)
        media_id = await upload(
            self.client,
            target,
            {**query, "type": msgtype},
            name=file_name(media.name, media.mime),
            data=data,
            mime=media.mime,
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            rate_limit_backoff=self.rate_limit_backoff,
        )
        await self._post(url, media_body(msgtype, media_id))

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        await post_json(
            self.client,
            url,
            body,
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
            rate_limit_backoff=self.rate_limit_backoff,
        )
