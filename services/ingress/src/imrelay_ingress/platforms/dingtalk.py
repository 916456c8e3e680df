"""DingTalk robot HTTP callbacks: the ``timestamp`` / ``sign`` headers (HMAC-SHA256 with the app secret,
one-hour window), then the message JSON. Replies go to the message's ``sessionWebhook`` while it is valid."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imrelay import dingtalk_crypto
from imrelay.config import BotConfig, DingTalkBot, Platform
from imrelay.errors import ParseError
from imrelay.events import Attachment, Chat, ChatType, InboundMessage, Sender, inbound_id

from . import CallbackRequest, CallbackResult, json_body, parse_json

_LEADING_MENTION = re.compile(r"^\s*@\S+\s+")


def normalize(body: dict[str, Any], bot_id: str, now: float) -> InboundMessage:
    msg_id, conversation = body.get("msgId"), body.get("conversationId")
    sender = body.get("senderStaffId") or body.get("senderId")
    if not msg_id or not conversation or not sender:
        raise ParseError("robot message lacks msgId, conversationId or sender")
    chat_type = ChatType.GROUP if str(body.get("conversationType")) == "2" else ChatType.DIRECT
    text = ""
    attachments: list[Attachment] = []
    kind = body.get("msgtype")
    if kind == "text":
        text = str((body.get("text") or {}).get("content", "")).strip()
        text = _LEADING_MENTION.sub("", text) if text.startswith("@") else text
    elif kind in ("picture", "file", "audio", "video"):
        content = body.get("content") or {}
        attachments.append(Attachment(kind="image" if kind == "picture" else kind,
                                      ref=str(content.get("downloadCode", ""))))
    handle = {"conversation_id": conversation, "robot_code": str(body.get("robotCode", "")),
              "sender_staff_id": str(body.get("senderStaffId", ""))}
    if body.get("sessionWebhook"):
        handle["session_webhook"] = str(body["sessionWebhook"])
        handle["session_webhook_expires_ms"] = str(body.get("sessionWebhookExpiredTime", 0))
    key = f"dingtalk:msg:{msg_id}"
    return InboundMessage(
        id=inbound_id(bot_id, key), platform=Platform.DINGTALK, bot_id=bot_id, platform_message_id=key,
        chat=Chat(id=conversation, type=chat_type),
        sender=Sender(id=str(sender), name=str(body.get("senderNick", ""))),
        text=text, mentioned=chat_type is ChatType.DIRECT or bool(body.get("isInAtList", True)),
        attachments=attachments, reply_handle=handle, received_at=datetime.fromtimestamp(now, UTC),
    )


@dataclass(frozen=True, slots=True)
class DingTalkAdapter:
    bot_id: str
    app_secret: str = field(repr=False)

    @classmethod
    def from_bot(cls, bot: BotConfig) -> DingTalkAdapter:
        assert isinstance(bot, DingTalkBot)
        return cls(bot_id=bot.id, app_secret=bot.credentials.app_secret.get_secret_value())

    def handle(self, request: CallbackRequest) -> CallbackResult:
        if request.method != "POST":
            raise ParseError("DingTalk callbacks are POST requests")
        dingtalk_crypto.verify(request.headers.get("timestamp"), request.headers.get("sign"),
                               self.app_secret, int(request.now * 1000))
        msg = normalize(parse_json(request.body), self.bot_id, request.now)
        return CallbackResult(body=json_body({}), content_type="application/json", message=msg,
                              dedupe_key=msg.platform_message_id)
