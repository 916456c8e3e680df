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
# DingTalk's message types with media, and the kind of each (rich text: text and pictures together)
_MEDIA = {"picture": "image", "file": "file", "audio": "voice", "video": "video"}


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


def _str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _code(content: dict[str, Any]) -> str:
    """A media item's download code (a picture's ``pictureDownloadCode`` is the same file's other
    name; the robot's download API takes ``downloadCode``)."""
    return _str(content.get("downloadCode")) or _str(content.get("pictureDownloadCode"))


def media_attachment(msgtype: str, content: Any) -> Attachment | None:
    """The attachment of a ``picture``, ``audio``, ``video`` or ``file`` message: its download code (and
    a file's name; a voice message's text when DingTalk recognised it)."""
    c = content if isinstance(content, dict) else {}
    code = _code(c)
    kind = _MEDIA[msgtype]
    transcript = _str(c.get("recognition")) if kind == "voice" else ""
    if not code and not transcript:
        return None
    size = c.get("fileSize")
    return Attachment(
        kind=kind,
        ref=code,
        name=_str(c.get("fileName"))[:200] if kind == "file" else "",
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        transcript=transcript or None,
    )


def rich_text(content: Any) -> tuple[str, list[Attachment]]:
    """A ``richText`` message: its text items joined, its pictures as image attachments."""
    items = content.get("richText") if isinstance(content, dict) else None
    texts: list[str] = []
    attachments: list[Attachment] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        if "text" in item and isinstance(item["text"], str):
            texts.append(item["text"])
        elif item.get("type") == "picture" or "downloadCode" in item or "pictureDownloadCode" in item:
            code = _code(item)
            if code:
                attachments.append(Attachment(kind="image", ref=code))
    text = "".join(texts).strip()
    return (_LEADING_MENTION.sub("", text) if text.startswith("@") else text), attachments


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
    elif m.msgtype == "richText":
        text, attachments = rich_text(m.content)
    elif m.msgtype in _MEDIA:
        attachment = media_attachment(m.msgtype, m.content)
        if attachment is not None:
            attachments.append(attachment)
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
