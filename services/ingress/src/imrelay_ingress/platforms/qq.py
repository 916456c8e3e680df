"""QQ bot webhooks (QQ 开放平台): op 13 URL validation (signed with the key derived from the bot secret),
op 0 dispatches verified with Ed25519 over ``X-Signature-Timestamp + raw body`` and acked with op 12."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from Crypto.PublicKey import ECC

from imrelay import ed25519
from imrelay.config import BotConfig, Platform, QQBot
from imrelay.errors import ParseError, VerifyError
from imrelay.events import Chat, ChatType, InboundMessage, Sender, inbound_id

from . import CallbackRequest, CallbackResult, json_body, parse_json

ACK = json_body({"op": 12})
_MENTION = re.compile(r"<@!?\w+>\s*")

# event -> (chat type, reply kind, where the chat id is, where the sender id is)
EVENTS: dict[str, tuple[ChatType, str, str, tuple[str, ...]]] = {
    "GROUP_AT_MESSAGE_CREATE": (ChatType.GROUP, "group", "group_openid", ("member_openid",)),
    "C2C_MESSAGE_CREATE": (ChatType.DIRECT, "c2c", "", ("user_openid",)),
    "AT_MESSAGE_CREATE": (ChatType.GROUP, "channel", "channel_id", ("id",)),
    "DIRECT_MESSAGE_CREATE": (ChatType.DIRECT, "dm", "guild_id", ("id",)),
}


def normalize(payload: dict[str, Any], bot_id: str, now: float) -> InboundMessage | None:
    event = payload.get("t")
    spec = EVENTS.get(str(event))
    if spec is None:
        return None
    chat_type, reply_kind, chat_field, author_fields = spec
    d = payload.get("d") or {}
    author = d.get("author") or {}
    user = next((author.get(f) for f in author_fields if author.get(f)), None)
    msg_id = d.get("id")
    if not msg_id or not user:
        raise ParseError("QQ message lacks id or author")
    chat_id = str(d.get(chat_field) if chat_field else user)
    if not chat_id or chat_id == "None":
        raise ParseError(f"QQ message lacks {chat_field}")
    text = _MENTION.sub("", str(d.get("content", ""))).strip()
    key = f"qq:msg:{msg_id}"
    return InboundMessage(
        id=inbound_id(bot_id, key), platform=Platform.QQ, bot_id=bot_id, platform_message_id=key,
        chat=Chat(id=chat_id, type=chat_type),
        sender=Sender(id=str(user), name=str(author.get("username", ""))),
        text=text, mentioned=True,
        reply_handle={"kind": reply_kind, "target": chat_id, "msg_id": str(msg_id),
                      "guild_id": str(d.get("guild_id", ""))},
        received_at=datetime.fromtimestamp(now, UTC),
    )


@dataclass(frozen=True, slots=True)
class QQAdapter:
    bot_id: str
    app_id: str
    key: ECC.EccKey

    @classmethod
    def from_bot(cls, bot: BotConfig) -> QQAdapter:
        assert isinstance(bot, QQBot)
        secret = bot.credentials.app_secret.get_secret_value()
        return cls(bot_id=bot.id, app_id=bot.credentials.app_id,
                   key=ed25519.signing_key(ed25519.qq_seed(secret)))

    def __repr__(self) -> str:
        return f"QQAdapter(bot_id={self.bot_id!r}, app_id={self.app_id!r}, key=***)"

    def handle(self, request: CallbackRequest) -> CallbackResult:
        if request.method != "POST":
            raise ParseError("QQ callbacks are POST requests")
        appid = request.headers.get("x-bot-appid")
        if appid is not None and appid != self.app_id:
            raise VerifyError("callback for another app id")
        payload = parse_json(request.body)
        op = payload.get("op")
        if op == 13:
            d = payload.get("d") or {}
            plain, event_ts = d.get("plain_token"), d.get("event_ts")
            if not isinstance(plain, str) or not isinstance(event_ts, str):
                raise ParseError("validation request lacks plain_token or event_ts")
            signature = ed25519.sign(self.key, (event_ts + plain).encode("utf-8"))
            return CallbackResult(body=json_body({"plain_token": plain, "signature": signature}),
                                  content_type="application/json")
        ts = request.headers.get("x-signature-timestamp") or ""
        ed25519.verify(self.key.public_key(), ts.encode("utf-8") + request.body,
                       request.headers.get("x-signature-ed25519"))
        if op != 0:
            return CallbackResult(body=ACK, content_type="application/json")
        msg = normalize(payload, self.bot_id, request.now)
        return CallbackResult(body=ACK, content_type="application/json", message=msg,
                              dedupe_key=msg.platform_message_id if msg else None)
