"""DingTalk robot HTTP callbacks: the ``timestamp`` / ``sign`` headers (HMAC-SHA256 with the app secret),
then the message JSON. Replies go to the message's ``sessionWebhook`` while it is valid.

The signature covers the timestamp and the secret only, not the body: one observed header pair would let
anyone post any body while the timestamp is accepted. So the pair is accepted within the bot's replay
window only (DingTalk's own hour at most), used once cluster-wide (:class:`ReplayClaim`: the same pair with
another body is refused; with the same body it is a platform retry), and the body must name this bot's
robot code. DingTalk's Stream mode (a long connection) has none of these weaknesses."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imrelay.callbacks import (
    CallbackRequest,
    CallbackResult,
    Payload,
    ReplayClaim,
    json_body,
    parse_json,
    parse_model,
)
from imrelay.errors import ParseError, VerifyError
from imrelay.events import Attachment, Chat, ChatType, InboundMessage, Sender, inbound_id
from imrelay.platforms.dingtalk import crypto as dingtalk_crypto
from imrelay.platforms.dingtalk.config import DingTalkBot
from imrelay.platforms.dingtalk.handle import DingTalkHandle

_LEADING_MENTION = re.compile(r"^\s*@\S+\s+")
_MEDIA = {"picture": "image", "file": "file", "audio": "audio", "video": "video"}


class Text(Payload):
    content: str | None = None


class Message(Payload):
    msgId: str
    conversationId: str
    conversationType: str | None = None
    senderStaffId: str | None = None
    senderId: str | None = None
    senderNick: str | None = None
    robotCode: str | None = None
    msgtype: str | None = None
    text: Text | None = None
    content: Any = None
    isInAtList: bool | None = None
    sessionWebhook: str | None = None
    sessionWebhookExpiredTime: int | None = None


def normalize(body: dict[str, Any], bot_id: str, now: float) -> InboundMessage:
    m = parse_model(Message, body, "robot message")
    sender = m.senderStaffId or m.senderId
    if not m.msgId or not m.conversationId or not sender:
        raise ParseError("robot message lacks msgId, conversationId or sender")
    chat_type = ChatType.GROUP if m.conversationType == "2" else ChatType.DIRECT
    text = ""
    attachments: list[Attachment] = []
    if m.msgtype == "text":
        text = ((m.text.content if m.text else None) or "").strip()
        text = _LEADING_MENTION.sub("", text) if text.startswith("@") else text
    elif m.msgtype in _MEDIA:
        content = m.content if isinstance(m.content, dict) else {}
        code = content.get("downloadCode")
        attachments.append(Attachment(kind=_MEDIA[m.msgtype], ref=code if isinstance(code, str) else ""))
    handle = DingTalkHandle(
        conversation_id=m.conversationId,
        robot_code=m.robotCode or "",
        sender_staff_id=m.senderStaffId or "",
        session_webhook=m.sessionWebhook or "",
        session_webhook_expires_ms=(m.sessionWebhookExpiredTime or 0) if m.sessionWebhook else 0,
    )
    key = f"dingtalk:msg:{m.msgId}"
    return InboundMessage(
        id=inbound_id(bot_id, key),
        platform="dingtalk",
        bot_id=bot_id,
        platform_message_id=key,
        chat=Chat(id=m.conversationId, type=chat_type),
        sender=Sender(id=sender, name=m.senderNick or ""),
        text=text,
        mentioned=chat_type is ChatType.DIRECT or m.isInAtList is not False,
        attachments=attachments,
        reply_handle=handle,
        received_at=datetime.fromtimestamp(now, UTC),
    )


def window_ms(replay_window_seconds: float) -> int:
    """The accepted distance of a signed timestamp: the bot's window, never more than DingTalk's hour."""
    ms = int(replay_window_seconds * 1000)
    return dingtalk_crypto.WINDOW_MS if not ms else min(ms, dingtalk_crypto.WINDOW_MS)


@dataclass(frozen=True, slots=True)
class DingTalkAdapter:
    bot_id: str
    robot_code: str
    app_secret: str = field(repr=False)
    window_ms: int = dingtalk_crypto.WINDOW_MS

    @classmethod
    def from_bot(cls, bot: DingTalkBot) -> DingTalkAdapter:
        return cls(
            bot_id=bot.id,
            robot_code=bot.credentials.expected_robot_code,
            app_secret=bot.credentials.app_secret.get_secret_value(),
            window_ms=window_ms(bot.replay_window_seconds),
        )

    def handle(self, request: CallbackRequest) -> CallbackResult:
        if request.method != "POST":
            raise ParseError("DingTalk callbacks are POST requests")
        ts, sign = request.headers.get("timestamp"), request.headers.get("sign")
        dingtalk_crypto.verify(ts, sign, self.app_secret, int(request.now * 1000), window_ms=self.window_ms)
        body = parse_json(request.body)
        robot = body.get("robotCode")
        if not isinstance(robot, str) or robot != self.robot_code:
            raise VerifyError("robotCode is not this bot's")
        msg = normalize(body, self.bot_id, request.now)
        claim = ReplayClaim(
            key=hashlib.sha256(f"dingtalk\0{self.bot_id}\0{ts}\0{sign}".encode()).hexdigest(),
            fingerprint=hashlib.sha256(request.body).hexdigest(),
            ttl=2 * self.window_ms / 1000,
        )
        return CallbackResult(
            body=json_body({}),
            content_type="application/json",
            message=msg,
            dedupe_key=msg.platform_message_id,
            replay_claim=claim,
        )
