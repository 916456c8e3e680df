"""The Discord Gateway's wire facts and the pure decisions of a client (no sockets here): opcodes, frames,
close codes, heartbeat timing and acknowledgement tracking, whether to resume, and which ``MESSAGE_CREATE``
events are for the bot (a mention or a DM) and what they become.

The Gateway (``wss://gateway.discord.gg/?v=10&encoding=json``, the URL from ``GET /api/v10/gateway/bot``)
speaks JSON frames ``{"op", "d", "s", "t"}``. Hello (op 10) gives ``heartbeat_interval`` (ms); the client
heartbeats (op 1, ``d`` = the last sequence it handled) first after ``interval * jitter`` and then every
interval, and expects a Heartbeat ACK (op 11) before the next one (none: the connection is a zombie; close
it with a code other than 1000/1001, which keep the session, and resume). Identify (op 2) starts a session;
READY gives ``session_id`` and ``resume_gateway_url``. Resume (op 6, ``session_id`` + ``seq``) on the
resume URL replays every event after ``seq`` and ends with RESUMED. Invalid Session (op 9, ``d`` = whether
the session may be resumed) and Reconnect (op 7) close the socket; a close code says whether to reconnect
at all (:data:`FATAL_CLOSES`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from ...events import Chat, ChatType, InboundMessage, Sender, inbound_id
from .handle import DiscordHandle
from .media import from_message

API_VERSION = 10
DISPATCH, HEARTBEAT, IDENTIFY, RESUME, RECONNECT, INVALID_SESSION, HELLO, HEARTBEAT_ACK = (
    0,
    1,
    2,
    6,
    7,
    9,
    10,
    11,
)
GUILD_MESSAGES, DIRECT_MESSAGES = 1 << 9, 1 << 12
INTENTS = GUILD_MESSAGES | DIRECT_MESSAGES  # no privileged intent: mentions and DMs carry their content
RESUMABLE_CLOSE = 4000  # what the client closes with to keep its session (1000/1001 end it)

# Close codes after which reconnecting cannot help: what to fix.
FATAL_CLOSES: dict[int, str] = {
    4004: "the bot token was refused: check credentials.bot_token (Developer Portal > Bot > Reset Token)",
    4010: "invalid shard sent on Identify",
    4011: "the bot is in too many guilds to run without sharding",
    4012: "invalid Gateway API version",
    4013: "invalid intents sent on Identify",
    4014: "a disallowed (privileged) intent was requested: enable it in Developer Portal > Bot, or drop it",
}
# Close codes after which the session cannot be resumed: identify anew.
NEW_SESSION_CLOSES = frozenset({4007, 4009})  # invalid seq, session timed out


class Next(Enum):
    """What to do after a socket ended."""

    RESUME = "resume"  # reconnect to resume_gateway_url and Resume the session
    IDENTIFY = "identify"  # reconnect to the Gateway URL and Identify (a new session)
    STOP = "stop"  # do not reconnect: a configuration error (FATAL_CLOSES)


def gateway_socket_url(base: str) -> str:
    """The WebSocket URL to dial, with the version and encoding Discord wants in the query."""
    path = urlsplit(base).path
    return f"{base.rstrip('/')}{'' if path.strip('/') else '/'}?v={API_VERSION}&encoding=json"


def frame(op: int, d: Any) -> str:
    return json.dumps({"op": op, "d": d})


def identify(token: str, intents: int = INTENTS) -> str:
    return frame(
        IDENTIFY,
        {
            "token": token,
            "intents": intents,
            "properties": {"os": "linux", "browser": "imrelay", "device": "imrelay"},
        },
    )


def resume(token: str, session_id: str, seq: int | None) -> str:
    return frame(RESUME, {"token": token, "session_id": session_id, "seq": seq})


def heartbeat(seq: int | None) -> str:
    return frame(HEARTBEAT, seq)


def first_beat_delay(interval: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the first heartbeat: ``interval * jitter``, jitter in [0, 1) (Discord asks for it so
    that clients reconnecting together do not heartbeat together)."""
    return interval * rand()


@dataclass
class Beats:
    """Heartbeat acknowledgements: a heartbeat sent while the previous one is unacknowledged means the
    connection is a zombie."""

    awaiting_ack: bool = False
    sent: int = 0
    acked: int = 0

    def may_beat(self) -> bool:
        """False when the previous heartbeat was never acknowledged (close and resume instead)."""
        return not self.awaiting_ack

    def beat(self) -> None:
        self.awaiting_ack, self.sent = True, self.sent + 1

    def ack(self) -> None:
        self.awaiting_ack, self.acked = False, self.acked + 1


@dataclass
class Session:
    """A Gateway session, kept across sockets so a new socket can resume it. ``seq`` is the last event
    stored (never one that is not): resuming from it replays everything after."""

    session_id: str = ""
    resume_url: str = ""
    seq: int | None = None
    bot_user_id: str = ""
    history: list[str] = field(default_factory=list)  # how recent sockets ended (for the logs)

    @property
    def resumable(self) -> bool:
        return bool(self.session_id and self.resume_url)

    def forget(self) -> None:
        self.session_id, self.resume_url, self.seq = "", "", None

    def stored(self, seq: int | None) -> None:
        if seq is not None and (self.seq is None or seq > self.seq):
            self.seq = seq


def after_close(code: int | None, session: Session) -> Next:
    """What to do after the socket closed with ``code`` (None: no close frame, a dropped connection)."""
    if code in FATAL_CLOSES:
        return Next.STOP
    if code in NEW_SESSION_CLOSES:
        return Next.IDENTIFY
    return Next.RESUME if session.resumable else Next.IDENTIFY


def after_invalid_session(resumable: bool, session: Session) -> Next:
    """Invalid Session (op 9): resume if Discord says the session may be, otherwise a new one."""
    return Next.RESUME if resumable and session.resumable else Next.IDENTIFY


# ---- MESSAGE_CREATE --------------------------------------------------------------------------------------

MENTION_RE = re.compile(r"<@!?(\d+)>")


def strip_mention(content: str, bot_user_id: str) -> str:
    """The text without the bot's own mentions (``<@id>`` or the older ``<@!id>``), spaces tidied."""
    text = re.sub(rf"<@!?{re.escape(bot_user_id)}>", " ", content) if bot_user_id else content
    return re.sub(r"\s+", " ", text).strip()


def mentions_bot(message: dict[str, Any], bot_user_id: str) -> bool:
    listed = any(str((u or {}).get("id", "")) == bot_user_id for u in message.get("mentions") or [])
    return listed or bot_user_id in MENTION_RE.findall(str(message.get("content", "")))


def for_bot(message: dict[str, Any], bot_user_id: str) -> bool:
    """A ``MESSAGE_CREATE`` the bot answers: from a human (not itself, not another bot or a webhook),
    a DM (no ``guild_id``) or a guild message that mentions the bot."""
    author = message.get("author") or {}
    if (
        not author.get("id")
        or str(author["id"]) == bot_user_id
        or author.get("bot")
        or message.get("webhook_id")
    ):
        return False
    return not message.get("guild_id") or mentions_bot(message, bot_user_id)


def normalize(
    message: dict[str, Any], bot_id: str, application_id: str, bot_user_id: str, now: float
) -> InboundMessage:
    """A ``MESSAGE_CREATE`` for the bot as an inbound message, answered as a reply to it."""
    author = message.get("author") or {}
    msg_id, channel = str(message.get("id", "")), str(message.get("channel_id", ""))
    if not msg_id or not channel or not author.get("id"):
        raise ValueError("MESSAGE_CREATE lacks id, channel_id or author")
    guild = str(message.get("guild_id") or "")
    key = f"discord:message:{msg_id}"  # the same message replayed on a resume is the same message
    return InboundMessage(
        id=inbound_id(bot_id, key),
        platform="discord",
        bot_id=bot_id,
        platform_message_id=key,
        chat=Chat(id=channel, type=ChatType.GROUP if guild else ChatType.DIRECT),
        sender=Sender(
            id=str(author["id"]), name=str(author.get("global_name") or author.get("username") or "")
        ),
        text=strip_mention(str(message.get("content", "")), bot_user_id),
        attachments=from_message(message),
        mentioned=True,
        reply_handle=DiscordHandle(
            application_id=application_id, channel_id=channel, message_id=msg_id, guild_id=guild
        ),
        received_at=datetime.fromtimestamp(now, UTC),
    )
