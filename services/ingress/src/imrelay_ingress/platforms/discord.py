"""Discord interactions endpoint: Ed25519 over ``X-Signature-Timestamp + raw body`` (401 when it fails,
as Discord expects), PING -> PONG, and the ``/ask`` command acknowledged with a deferred response; the
answer is written later by editing the original response."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from imrelay import ed25519
from imrelay.config import BotConfig, DiscordBot, Platform
from imrelay.errors import ParseError
from imrelay.events import Chat, ChatType, InboundMessage, Sender, inbound_id

from . import CallbackRequest, CallbackResult, json_body, parse_json

PING, APPLICATION_COMMAND = 1, 2
PONG = json_body({"type": 1})
DEFERRED = json_body({"type": 5})  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
UNSUPPORTED = json_body({"type": 4, "data": {"content": "This interaction is not supported.",
                                             "flags": 64}})


def command_text(data: dict[str, Any]) -> str:
    """The text of a slash command: its string options joined (``/ask q:<question>``)."""
    parts = [str(o.get("value", "")) for o in data.get("options") or []
             if isinstance(o, dict) and isinstance(o.get("value"), str)]
    return " ".join(p for p in parts if p).strip()


def normalize(payload: dict[str, Any], bot_id: str, now: float) -> InboundMessage:
    interaction, token = payload.get("id"), payload.get("token")
    application = payload.get("application_id")
    member = payload.get("member") or {}
    user = member.get("user") or payload.get("user") or {}
    if not interaction or not token or not application or not user.get("id"):
        raise ParseError("interaction lacks id, token, application_id or user")
    channel = payload.get("channel_id") or (payload.get("channel") or {}).get("id") or user["id"]
    in_guild = bool(payload.get("guild_id"))
    key = f"discord:interaction:{interaction}"
    return InboundMessage(
        id=inbound_id(bot_id, key), platform=Platform.DISCORD, bot_id=bot_id, platform_message_id=key,
        chat=Chat(id=str(channel), type=ChatType.GROUP if in_guild else ChatType.DIRECT),
        sender=Sender(id=str(user["id"]), name=str(user.get("global_name") or user.get("username") or "")),
        text=command_text(payload.get("data") or {}), mentioned=True,
        reply_handle={"application_id": str(application), "interaction_token": str(token)},
        received_at=datetime.fromtimestamp(now, UTC),
    )


@dataclass(frozen=True, slots=True)
class DiscordAdapter:
    bot_id: str
    public_key: bytes

    @classmethod
    def from_bot(cls, bot: BotConfig) -> DiscordAdapter:
        assert isinstance(bot, DiscordBot)
        return cls(bot_id=bot.id, public_key=bytes.fromhex(bot.credentials.public_key))

    def handle(self, request: CallbackRequest) -> CallbackResult:
        if request.method != "POST":
            raise ParseError("Discord interactions are POST requests")
        ts = request.headers.get("x-signature-timestamp") or ""
        ed25519.verify(self.public_key, ts.encode("utf-8") + request.body,
                       request.headers.get("x-signature-ed25519"))
        payload = parse_json(request.body)
        kind = payload.get("type")
        if kind == PING:
            return CallbackResult(body=PONG, content_type="application/json")
        if kind != APPLICATION_COMMAND:
            return CallbackResult(body=UNSUPPORTED, content_type="application/json")
        msg = normalize(payload, self.bot_id, request.now)
        return CallbackResult(body=DEFERRED, content_type="application/json", message=msg,
                              dedupe_key=msg.platform_message_id)
