"""Discord interactions endpoint: Ed25519 over ``X-Signature-Timestamp + raw body`` (401 when it fails,
as Discord expects), PING -> PONG, and the ``/ask`` command acknowledged with a deferred response; the
answer is written later by editing the original response."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from imrelay import ed25519
from imrelay.callbacks import (
    CallbackRequest,
    CallbackResult,
    Payload,
    check_timestamp,
    json_body,
    parse_json,
    parse_model,
)
from imrelay.errors import ParseError
from imrelay.events import Chat, ChatType, InboundMessage, Sender, inbound_id
from imrelay.platforms.discord.config import DiscordBot
from imrelay.platforms.discord.handle import DiscordHandle
from imrelay.platforms.discord.media import ATTACHMENT_OPTION, from_command

PING, APPLICATION_COMMAND = 1, 2
PONG = json_body({"type": 1})
DEFERRED = json_body({"type": 5})  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
UNSUPPORTED = json_body({"type": 4, "data": {"content": "This interaction is not supported.", "flags": 64}})


class User(Payload):
    id: str
    username: str | None = None
    global_name: str | None = None


class Member(Payload):
    user: User | None = None


class Channel(Payload):
    id: str | None = None


class Option(Payload):
    type: int | None = None
    value: Any = None


class CommandData(Payload):
    options: list[Option] | None = None


class Interaction(Payload):
    id: str
    token: str
    application_id: str
    type: int
    guild_id: str | None = None
    channel_id: str | None = None
    channel: Channel | None = None
    member: Member | None = None
    user: User | None = None
    data: CommandData | None = None
    attachment_size_limit: int | None = None  # the largest file the answer may carry


class Kind(Payload):
    type: int


def command_text(data: CommandData | None) -> str:
    """The text of a slash command: its string options joined (``/ask q:<question>``); an ATTACHMENT
    option's value is an attachment id, not text."""
    parts = [
        o.value
        for o in (data.options if data else None) or []
        if isinstance(o.value, str) and o.type != ATTACHMENT_OPTION
    ]
    return " ".join(p for p in parts if p).strip()


def normalize(payload: dict[str, Any], bot_id: str, now: float) -> InboundMessage:
    i = parse_model(Interaction, payload, "interaction")
    user = (i.member.user if i.member else None) or i.user
    if not i.id or not i.token or not i.application_id or user is None or not user.id:
        raise ParseError("interaction lacks id, token, application_id or user")
    channel = i.channel_id or (i.channel.id if i.channel else None) or user.id
    data = payload.get("data")
    limit = i.attachment_size_limit if i.attachment_size_limit and i.attachment_size_limit > 0 else 0
    key = f"discord:interaction:{i.id}"
    return InboundMessage(
        id=inbound_id(bot_id, key),
        platform="discord",
        bot_id=bot_id,
        platform_message_id=key,
        chat=Chat(id=channel, type=ChatType.GROUP if i.guild_id else ChatType.DIRECT),
        sender=Sender(id=user.id, name=user.global_name or user.username or ""),
        text=command_text(i.data),
        attachments=from_command(data if isinstance(data, dict) else None),
        mentioned=True,
        reply_handle=DiscordHandle(
            application_id=i.application_id, interaction_token=i.token, attachment_size_limit=limit
        ),
        received_at=datetime.fromtimestamp(now, UTC),
    )


@dataclass(frozen=True, slots=True)
class DiscordAdapter:
    bot_id: str
    public_key: bytes
    replay_window: float = 300.0

    @classmethod
    def from_bot(cls, bot: DiscordBot) -> DiscordAdapter:
        return cls(
            bot_id=bot.id,
            public_key=bytes.fromhex(bot.credentials.public_key),
            replay_window=bot.replay_window_seconds,
        )

    def handle(self, request: CallbackRequest) -> CallbackResult:
        if request.method != "POST":
            raise ParseError("Discord interactions are POST requests")
        ts = request.headers.get("x-signature-timestamp") or ""
        ed25519.verify(
            self.public_key, ts.encode("utf-8") + request.body, request.headers.get("x-signature-ed25519")
        )
        check_timestamp(ts, request.now, self.replay_window)
        payload = parse_json(request.body)
        kind = parse_model(Kind, payload, "interaction").type
        if kind == PING:
            return CallbackResult(body=PONG, content_type="application/json")
        if kind != APPLICATION_COMMAND:
            return CallbackResult(body=UNSUPPORTED, content_type="application/json")
        msg = normalize(payload, self.bot_id, request.now)
        return CallbackResult(
            body=DEFERRED, content_type="application/json", message=msg, dedupe_key=msg.platform_message_id
        )
