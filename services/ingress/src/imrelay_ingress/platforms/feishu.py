"""Feishu and Lark event callbacks (event subscription v2.0): the same protocol on two domains.

Order of checks: the signature (when an Encrypt Key is set and the request is signed) over the raw body,
the replay window, decryption, then the verification token inside the payload. URL verification answers
the challenge. ``im.message.receive_v1`` becomes an :class:`InboundMessage` deduplicated by ``event_id``
(Feishu retries for hours).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imrelay import feishu_crypto
from imrelay.config import BotConfig, FeishuBot, Platform
from imrelay.errors import ParseError, VerifyError
from imrelay.events import Attachment, Chat, ChatType, InboundMessage, Sender, inbound_id

from . import CallbackRequest, CallbackResult, json_body, parse_json

SUCCESS = json_body({"msg": "success"})
_PLACEHOLDER = re.compile(r"@_user_\d+")


def resolve_mentions(text: str, mentions: list[dict[str, Any]]) -> tuple[str, bool]:
    """Drop the ``@_user_N`` placeholders that open the message (the bot being addressed) and write the
    others as ``@Name``; say whether the message mentioned anyone."""
    names = {m.get("key"): str(m.get("name") or "") for m in mentions if isinstance(m, dict)}
    stripped = text.lstrip()
    while (m := _PLACEHOLDER.match(stripped)) is not None:
        stripped = stripped[m.end():].lstrip()
    resolved = _PLACEHOLDER.sub(lambda m: f"@{names.get(m.group(0)) or 'someone'}", stripped)
    return resolved.strip(), bool(mentions)


def normalize(payload: dict[str, Any], platform: Platform, bot_id: str, now: float) -> InboundMessage | None:
    header = payload.get("header") or {}
    if header.get("event_type") != "im.message.receive_v1":
        return None
    event = payload.get("event") or {}
    message = event.get("message") or {}
    sender = (event.get("sender") or {}).get("sender_id") or {}
    event_id, chat_id = header.get("event_id"), message.get("chat_id")
    open_id = sender.get("open_id")
    if not event_id or not chat_id or not open_id or not message.get("message_id"):
        raise ParseError("message event lacks event_id, chat_id, sender or message_id")
    try:
        content = json.loads(message.get("content") or "{}")
    except ValueError as exc:
        raise ParseError("message content is not JSON") from exc
    text, mentioned = "", False
    attachments: list[Attachment] = []
    kind = message.get("message_type")
    if kind == "text":
        text, mentioned = resolve_mentions(str(content.get("text", "")), message.get("mentions") or [])
    elif kind in ("image", "file", "audio", "media"):
        ref = content.get("image_key") or content.get("file_key") or ""
        attachments.append(Attachment(kind="image" if kind == "image" else kind, ref=str(ref)))
    chat_type = ChatType.DIRECT if message.get("chat_type") == "p2p" else ChatType.GROUP
    key = f"feishu:event:{event_id}"
    return InboundMessage(
        id=inbound_id(bot_id, key), platform=platform, bot_id=bot_id, platform_message_id=key,
        chat=Chat(id=chat_id, type=chat_type),
        sender=Sender(id=open_id, name=str(sender.get("user_id") or "")),
        text=text, mentioned=mentioned or chat_type is ChatType.DIRECT, attachments=attachments,
        reply_handle={"message_id": str(message["message_id"]), "chat_id": chat_id,
                      "open_id": open_id},
        received_at=datetime.fromtimestamp(now, UTC),
    )


@dataclass(frozen=True, slots=True)
class FeishuAdapter:
    bot_id: str
    platform: Platform
    encrypt_key: str = field(repr=False)
    verification_token: str = field(repr=False)
    replay_window: float

    @classmethod
    def from_bot(cls, bot: BotConfig) -> FeishuAdapter:
        assert isinstance(bot, FeishuBot)
        c = bot.credentials
        return cls(bot_id=bot.id, platform=bot.platform, encrypt_key=c.encrypt_key.get_secret_value(),
                   verification_token=c.verification_token.get_secret_value(),
                   replay_window=bot.replay_window_seconds)

    def _check_signature(self, request: CallbackRequest) -> bool:
        h = request.headers
        ts, nonce = h.get("x-lark-request-timestamp"), h.get("x-lark-request-nonce")
        sig = h.get("x-lark-signature")
        if not (ts or nonce or sig):
            return False
        if not ts or not nonce or not sig:
            raise VerifyError("incomplete signature headers")
        feishu_crypto.verify_signature(ts, nonce, self.encrypt_key, request.body, sig)
        if self.replay_window:
            try:
                age = abs(request.now - float(ts))
            except ValueError as exc:
                raise VerifyError("timestamp is not a number") from exc
            if age > self.replay_window:
                raise VerifyError("timestamp outside the replay window")
        return True

    def handle(self, request: CallbackRequest) -> CallbackResult:
        if request.method != "POST":
            raise ParseError("Feishu callbacks are POST requests")
        body = parse_json(request.body)
        signed = False
        if "encrypt" in body:
            if not self.encrypt_key:
                raise VerifyError("encrypted body but no encrypt_key configured")
            signed = self._check_signature(request)
            body = parse_json(feishu_crypto.decrypt(self.encrypt_key, str(body["encrypt"])))
        elif self.encrypt_key:
            raise VerifyError("plaintext body but an encrypt_key is configured")
        header = body.get("header") if isinstance(body.get("header"), dict) else None
        token = (header or {}).get("token") if header else body.get("token")
        if not isinstance(token, str) or not _equal(token, self.verification_token):
            raise VerifyError("verification token mismatch")
        if body.get("type") == "url_verification":
            return CallbackResult(body=json_body({"challenge": str(body.get("challenge", ""))}),
                                  content_type="application/json")
        if self.encrypt_key and not signed:
            raise VerifyError("unsigned event")  # only the URL check may come unsigned
        msg = normalize(body, self.platform, self.bot_id, request.now)
        return CallbackResult(body=SUCCESS, content_type="application/json", message=msg,
                              dedupe_key=msg.platform_message_id if msg else None)


def _equal(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
