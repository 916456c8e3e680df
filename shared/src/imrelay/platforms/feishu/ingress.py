"""Feishu and Lark event callbacks (event subscription v2.0): the same protocol on two domains.

With an Encrypt Key (required unless the bot sets ``allow_unsigned_events``) every event is encrypted and
signed: the signature over the raw body is checked first, then the replay window, decryption, the
verification token inside the payload and the app id. Only the URL check may come unsigned (Feishu sends
it so); it is answered with its challenge. ``im.message.receive_v1`` becomes an :class:`InboundMessage`
deduplicated by ``event_id`` (Feishu retries for hours); the long connection (:mod:`.connection`)
uses the same normalization, deduplicated by the chat message's id.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imrelay.callbacks import (
    CallbackRequest,
    CallbackResult,
    Payload,
    check_timestamp,
    json_body,
    loads_json,
    parse_json,
    parse_model,
)
from imrelay.errors import ParseError, VerifyError
from imrelay.events import Attachment, Chat, ChatType, InboundMessage, Sender, inbound_id
from imrelay.platforms.feishu import crypto as feishu_crypto
from imrelay.platforms.feishu.config import FeishuBot
from imrelay.platforms.feishu.handle import FeishuHandle

SUCCESS = json_body({"msg": "success"})
_PLACEHOLDER = re.compile(r"@_user_\d+")
# Feishu's message types with a resource -> the attachment kind (``media`` is a video)
_MEDIA = {"image": "image", "file": "file", "audio": "voice", "media": "video"}
_POST_TEXT_TAGS = {"text", "a", "md", "code_block"}


class Header(Payload):
    event_id: str | None = None
    token: str | None = None
    event_type: str | None = None
    app_id: str | None = None
    create_time: str | int | None = None  # milliseconds


class SenderId(Payload):
    open_id: str | None = None
    user_id: str | None = None


class EventSender(Payload):
    sender_id: SenderId | None = None


class Mention(Payload):
    key: str | None = None
    name: str | None = None


class Message(Payload):
    message_id: str
    chat_id: str
    chat_type: str | None = None
    message_type: str | None = None
    content: str | None = None
    mentions: list[Mention] | None = None


class Event(Payload):
    sender: EventSender | None = None
    message: Message | None = None


class Envelope(Payload):
    """A v2 event (``header`` + ``event``), or the URL check (``type``, ``token``, ``challenge``)."""

    header: Header | None = None
    event: Any = None
    type: str | None = None
    token: str | None = None
    challenge: str | None = None


def resolve_mentions(text: str, mentions: list[Mention]) -> tuple[str, bool]:
    """Drop the ``@_user_N`` placeholders that open the message (the bot being addressed) and write the
    others as ``@Name``; say whether the message mentioned anyone."""
    names = {m.key: m.name or "" for m in mentions}
    stripped = text.lstrip()
    while (m := _PLACEHOLDER.match(stripped)) is not None:
        stripped = stripped[m.end() :].lstrip()
    resolved = _PLACEHOLDER.sub(lambda m: f"@{names.get(m.group(0)) or 'someone'}", stripped)
    return resolved.strip(), bool(mentions)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def media_attachment(message_type: str, content: dict[str, Any]) -> Attachment | None:
    """The attachment of an ``image`` / ``file`` / ``audio`` / ``media`` message (None without a key).
    Its ``ref`` is the resource key the message's resource API takes; Feishu declares no size."""
    kind = _MEDIA[message_type]
    ref = _str(content.get("image_key" if message_type == "image" else "file_key"))
    if not ref:
        return None
    name = _str(content.get("file_name"))[:200]
    return Attachment(kind=kind, ref=ref, name=name)


def _post_body(content: dict[str, Any]) -> dict[str, Any]:
    """A post's body: the event carries ``{title, content}``; a post sent in several languages carries
    them by locale (the first one is read)."""
    if isinstance(content.get("content"), list):
        return content
    for value in content.values():
        if isinstance(value, dict) and isinstance(value.get("content"), list):
            return value
    return {}


def post_content(content: dict[str, Any]) -> tuple[str, str, list[Attachment]]:
    """A rich-text (``post``) message's title, text (its paragraphs, ``@_user_N`` placeholders kept for
    :func:`resolve_mentions`) and its pictures (and videos) as attachments."""
    body = _post_body(content)
    lines: list[str] = []
    images: list[Attachment] = []
    title = _str(body.get("title")).strip()
    for paragraph in body.get("content") or []:
        if not isinstance(paragraph, list):
            continue
        line: list[str] = []
        for element in paragraph:
            if not isinstance(element, dict):
                continue
            tag = element.get("tag")
            if tag in _POST_TEXT_TAGS:
                line.append(_str(element.get("text")))
            elif tag == "at":
                line.append(_str(element.get("user_id")) or f"@{_str(element.get('user_name'))}")
            elif tag == "img" and _str(element.get("image_key")):
                images.append(Attachment(kind="image", ref=_str(element.get("image_key"))))
            elif tag == "media" and _str(element.get("file_key")):
                images.append(Attachment(kind="video", ref=_str(element.get("file_key"))))
        if "".join(line).strip():
            lines.append("".join(line).strip())
    return title, "\n".join(lines), images


def normalize(
    envelope: Envelope, platform: str, bot_id: str, now: float, *, by_message_id: bool = False
) -> InboundMessage | None:
    """The message of an ``im.message.receive_v1`` event (None for other events). Its dedupe key is the
    event id, or with ``by_message_id`` the chat message's id: over a long connection Feishu re-pushes
    events after reconnects with a new event id but the same message id."""
    header = envelope.header or Header()
    if header.event_type != "im.message.receive_v1":
        return None
    event = parse_model(Event, envelope.event, "message event")
    message = event.message
    sender = (event.sender.sender_id if event.sender else None) or SenderId()
    if (
        not header.event_id
        or message is None
        or not message.chat_id
        or not sender.open_id
        or not message.message_id
    ):
        raise ParseError("message event lacks event_id, chat_id, sender or message_id")
    content = loads_json(message.content or "{}", "message content")
    if not isinstance(content, dict):
        raise ParseError("message content is not a JSON object")
    text, mentioned = "", False
    attachments: list[Attachment] = []
    kind = message.message_type
    if kind == "text":
        raw = content.get("text")
        text, mentioned = resolve_mentions(raw if isinstance(raw, str) else "", message.mentions or [])
    elif kind == "post":
        title, raw, attachments = post_content(content)
        text, mentioned = resolve_mentions(raw, message.mentions or [])
        text = "\n".join(x for x in (title, text) if x)
    elif kind in _MEDIA:
        attachment = media_attachment(kind, content)
        if attachment is not None:
            attachments.append(attachment)
    chat_type = ChatType.DIRECT if message.chat_type == "p2p" else ChatType.GROUP
    key = f"feishu:message:{message.message_id}" if by_message_id else f"feishu:event:{header.event_id}"
    return InboundMessage(
        id=inbound_id(bot_id, key),
        platform=platform,
        bot_id=bot_id,
        platform_message_id=key,
        chat=Chat(id=message.chat_id, type=chat_type),
        sender=Sender(id=sender.open_id, name=sender.user_id or ""),
        text=text,
        mentioned=mentioned or chat_type is ChatType.DIRECT,
        attachments=attachments,
        reply_handle=FeishuHandle(
            kind="lark" if platform == "lark" else "feishu",
            message_id=message.message_id,
            chat_id=message.chat_id,
            open_id=sender.open_id,
        ),
        received_at=datetime.fromtimestamp(now, UTC),
    )


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class FeishuAdapter:
    bot_id: str
    platform: str
    app_id: str
    encrypt_key: str = field(repr=False)
    verification_token: str = field(repr=False)
    replay_window: float = 300.0

    @classmethod
    def from_bot(cls, bot: FeishuBot) -> FeishuAdapter:
        c = bot.credentials
        return cls(
            bot_id=bot.id,
            platform=bot.platform,
            app_id=c.app_id,
            encrypt_key=c.encrypt_key.get_secret_value(),
            verification_token=c.verification_token.get_secret_value(),
            replay_window=bot.replay_window_seconds,
        )

    def _check_signature(self, request: CallbackRequest) -> bool:
        """True for a request signed with the Encrypt Key (in the window); False for an unsigned one."""
        h = request.headers
        ts, nonce = h.get("x-lark-request-timestamp"), h.get("x-lark-request-nonce")
        sig = h.get("x-lark-signature")
        if not (ts or nonce or sig):
            return False
        if not ts or not nonce or not sig:
            raise VerifyError("incomplete signature headers")
        feishu_crypto.verify_signature(ts, nonce, self.encrypt_key, request.body, sig)
        check_timestamp(ts, request.now, self.replay_window)
        return True

    def _open(self, request: CallbackRequest) -> tuple[dict[str, Any], bool]:
        """The event's plaintext JSON and whether the request was signed."""
        body = parse_json(request.body)
        if not self.encrypt_key:
            if "encrypt" in body:
                raise VerifyError("encrypted body but no encrypt_key configured")
            return body, False
        ciphertext = body.get("encrypt")
        if not isinstance(ciphertext, str):
            raise VerifyError("plaintext body but an encrypt_key is configured")
        signed = self._check_signature(request)
        return parse_json(feishu_crypto.decrypt(self.encrypt_key, ciphertext)), signed

    def handle(self, request: CallbackRequest) -> CallbackResult:
        if request.method != "POST":
            raise ParseError("Feishu callbacks are POST requests")
        plain, signed = self._open(request)
        envelope = parse_model(Envelope, plain, "event")
        token = envelope.header.token if envelope.header else envelope.token
        if token is None or not _equal(token, self.verification_token):
            raise VerifyError("verification token mismatch")
        if envelope.type == "url_verification":
            return CallbackResult(
                body=json_body({"challenge": envelope.challenge or ""}), content_type="application/json"
            )
        if self.encrypt_key and not signed:
            raise VerifyError("unsigned event")  # only the URL check may come unsigned
        if envelope.header and envelope.header.app_id and envelope.header.app_id != self.app_id:
            raise VerifyError("event for another app id")
        msg = normalize(envelope, self.platform, self.bot_id, request.now)
        return CallbackResult(
            body=SUCCESS,
            content_type="application/json",
            message=msg,
            dedupe_key=msg.platform_message_id if msg else None,
        )
