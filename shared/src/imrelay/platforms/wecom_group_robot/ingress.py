"""WeCom group robot (群机器人) callbacks: ReceiveId "", XML payloads, a per-chat WebhookUrl to reply to."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from imrelay.callbacks import CallbackRequest, CallbackResult
from imrelay.errors import ParseError
from imrelay.events import Attachment, Chat, ChatType, InboundMessage, Sender, inbound_id
from imrelay.platforms.wecom.crypto import WeComCrypto, crypto_for
from imrelay.platforms.wecom_group_robot.config import WeComGroupRobotBot
from imrelay.platforms.wecom_group_robot.handle import WeComGroupRobotHandle

from ..wecom.callbacks import decrypt_post, verify_url

_LEADING_MENTION = re.compile(r"^\s*@\S+\s*")


def strip_mention(text: str) -> tuple[str, bool]:
    """Remove the leading ``@RobotName`` a group message starts with; say whether there was one."""
    stripped, n = _LEADING_MENTION.subn("", text, count=1)
    return (stripped, True) if n else (text, False)


def _image(url: str) -> Attachment:
    return Attachment(kind="image", ref=url, url=url)


def mixed_items(fields: dict[str, str], limit: int = 64) -> tuple[list[str], list[Attachment]]:
    """A ``mixed`` message's items in order (``MixedMessage.MsgItem``, ``MsgItem[1]``...): its texts and
    its pictures (by URL)."""
    texts: list[str] = []
    images: list[Attachment] = []
    for n in range(limit):
        item = "MixedMessage.MsgItem" + (f"[{n}]" if n else "")
        kind = fields.get(f"{item}.MsgType")
        if kind is None:
            break
        if kind == "text":
            texts.append(fields.get(f"{item}.Text.Content", ""))
        elif kind == "image" and (url := fields.get(f"{item}.Image.ImageUrl", "")):
            images.append(_image(url))
    return texts, images


def normalize(fields: dict[str, str], bot_id: str, now: float) -> InboundMessage:
    msg_id = fields.get("MsgId")
    chat_id = fields.get("ChatId")
    user = fields.get("From.UserId")
    msg_type = fields.get("MsgType")
    if not msg_id or not chat_id or not user or not msg_type:
        raise ParseError("robot message lacks MsgId, ChatId, From.UserId or MsgType")
    key = f"wecom_robot:msgid:{msg_id}"
    chat_type = ChatType.GROUP if fields.get("ChatType", "group") == "group" else ChatType.DIRECT
    text, mentioned = "", chat_type is ChatType.DIRECT
    attachments: list[Attachment] = []
    kind, event = "message", None
    if msg_type in ("text", "mixed"):
        if msg_type == "text":
            text = fields.get("Text.Content", "")
        else:  # pictures and text in one message
            texts, attachments = mixed_items(fields)
            text = "\n".join(t for t in texts if t.strip())
        if chat_type is ChatType.GROUP:
            text, mentioned = strip_mention(text)
            mentioned = True  # the robot only receives group messages that @ it
    elif msg_type == "image" and (url := fields.get("Image.ImageUrl", "")):
        attachments.append(_image(url))
    elif msg_type == "event":
        kind, event = "event", fields.get("Event.EventType") or None
    handle = WeComGroupRobotHandle(chat_id=chat_id, webhook_url=fields.get("WebhookUrl", ""))
    return InboundMessage(
        id=inbound_id(bot_id, key),
        platform="wecom_group_robot",
        bot_id=bot_id,
        platform_message_id=key,
        kind=kind,
        event=event,
        chat=Chat(id=chat_id, type=chat_type),
        sender=Sender(id=user, name=fields.get("From.Name", ""), alias=fields.get("From.Alias", "")),
        text=text,
        mentioned=mentioned,
        attachments=attachments,
        reply_handle=handle,
        received_at=datetime.fromtimestamp(now, UTC),
    )


@dataclass(frozen=True, slots=True)
class WeComGroupRobotAdapter:
    bot_id: str
    crypto: WeComCrypto
    replay_window: float = 300.0

    @classmethod
    def from_bot(cls, bot: WeComGroupRobotBot) -> WeComGroupRobotAdapter:
        return cls(bot_id=bot.id, crypto=crypto_for(bot.credentials), replay_window=bot.replay_window_seconds)

    def handle(self, request: CallbackRequest) -> CallbackResult:
        if request.method == "GET":
            return CallbackResult(
                body=verify_url(self.crypto, request.query, request.now, self.replay_window)
            )
        fields = decrypt_post(self.crypto, request.query, request.body, request.now, self.replay_window)
        msg = normalize(fields, self.bot_id, request.now)
        return CallbackResult(message=msg, dedupe_key=msg.platform_message_id)
