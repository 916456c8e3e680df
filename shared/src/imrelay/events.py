"""The versioned event schema carried on NATS. Defined once; every service imports it from here.

* :class:`InboundMessage` on ``IMRELAY_IN``: one normalized user message (or platform event).
* :class:`ReplyChunk` on ``IMRELAY_OUT``: one piece of the answer to an inbound message. Deltas carry
  ``seq`` 0, 1, 2, ... and ``text``, the answer so far (platforms that edit a message in place show it);
  the last chunk has ``final=True`` and also carries ``full_text`` (the whole answer) so platforms that
  cannot edit a message deliver one coherent answer without keeping state.
* :class:`ConnectionRequest` on ``imrelay.conn.<platform>.<bot>`` (core NATS request/reply): the sender
  asks the connector holding a bot's long connection to send something on it; :class:`ConnectionAnswer`
  is the reply.

Both carry the ``reply_handle``: where the answer goes, a model of the event's platform
(:class:`~imrelay.platforms.handle.ReplyHandleBase`: one per platform package, told apart by ``kind``, which
is the event's ``platform``). Schema version 2 introduced it; a version 1 event's handle (a plain mapping
without ``kind``) is read as its platform's model.

Schema version 3 added media: an :class:`Attachment` says how its platform's package fetches it (``ref``,
``url``, a per-message ``key``, the declared ``size`` and ``name``, a ``transcript`` of a voice message),
and a final :class:`ReplyChunk` carries ``media``, references to images stored in the media bucket
(:class:`~imrelay.media.MediaRef`). Version 1 and 2 events are read unchanged (their attachments have no
sizes or keys); events are always written as version 3.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypeAlias

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from . import platforms
from .media import MediaRef
from .platforms.handle import ReplyHandleBase
from .redact import protect_obtained, protect_reply_handle

SCHEMA_VERSION = 3
HANDLE_SCHEMA_VERSION = 2  # the first version whose reply handles carry ``kind``
_ID_NAMESPACE = uuid.UUID("5b0a7c52-8c1e-4f53-9d0a-6e1f4d2c9a11")

__all__ = [
    "HANDLE_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "Attachment",
    "Chat",
    "ChatType",
    "ConnectionAnswer",
    "ConnectionRequest",
    "InboundMessage",
    "ReplyChunk",
    "ReplyFormat",
    "ReplyHandle",
    "Sender",
    "inbound_id",
]


class ChatType(StrEnum):
    DIRECT = "direct"
    GROUP = "group"


class ReplyFormat(StrEnum):
    TEXT = "text"
    MARKDOWN = "markdown"


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Chat(_Event):
    id: str
    type: ChatType


class Sender(_Event):
    id: str
    name: str = ""
    alias: str = ""  # e.g. a member's English name


def _protected_key(key: str | None) -> str | None:
    protect_obtained(key)
    return key


class Attachment(_Event):
    """A piece of media in a message, as its platform named it: the platform's package fetches it (in
    the worker, never in the ingress's ack path)."""

    kind: str  # image | voice | video | file (fetched), location | link (not)
    ref: str  # the platform's media id, resource key, download code or URL
    url: str | None = None
    name: str = ""  # the file name the platform gave, if any
    size: int | None = Field(default=None, ge=0)  # the size the platform declared, if any
    mime: str | None = None  # the type the platform declared (a hint: the bytes decide)
    # a per-message decryption key (a platform that encrypts each file with its own): a credential, masked
    key: Annotated[str | None, AfterValidator(_protected_key), Field(repr=False)] = None
    transcript: str | None = None  # a voice message's text, when the platform transcribed it


def _protected(handle: ReplyHandleBase) -> ReplyHandleBase:
    protect_reply_handle(handle)
    return handle


# Where to reply. It may carry credentials (a session webhook, an interaction token, a group robot's
# webhook key): every process that reads one masks them in its logs and traces.
if TYPE_CHECKING:
    ReplyHandle: TypeAlias = ReplyHandleBase
else:
    ReplyHandle = Annotated[platforms.handle_union(), AfterValidator(_protected)]


class _Routed(_Event):
    """An event that carries a reply handle: read a version 1 one's handle as its platform's model, and
    refuse a handle of another platform."""

    @model_validator(mode="before")
    @classmethod
    def _upgrade_handle(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        handle = data.get("reply_handle")
        version = data.get("schema_version", SCHEMA_VERSION)
        old = isinstance(version, int) and version < SCHEMA_VERSION
        v1 = isinstance(version, int) and version < HANDLE_SCHEMA_VERSION
        if isinstance(handle, dict) and (v1 or "kind" not in handle):
            platform = data.get("platform")
            if isinstance(platform, str):
                data = {**data, "reply_handle": platforms.upgrade_handle(handle, platform)}
        if old:
            data = {**data, "schema_version": SCHEMA_VERSION}
        return data

    @model_validator(mode="after")
    def _handle_of_platform(self) -> Self:
        handle: ReplyHandleBase | None = getattr(self, "reply_handle", None)
        platform: str = getattr(self, "platform", "")
        if handle is not None and handle.kind != platform:
            raise ValueError(f"a {handle.kind} reply handle on a {platform} event")
        return self


def inbound_id(bot_id: str, dedupe_key: str) -> str:
    """A stable id for an inbound message: the same platform message always gets the same id."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{bot_id}\x00{dedupe_key}"))


def utcnow() -> datetime:
    return datetime.now(UTC)


class InboundMessage(_Routed):
    schema_version: int = SCHEMA_VERSION
    id: str
    platform: str  # the bot's platform tag (imrelay.platforms)
    bot_id: str
    platform_message_id: str = Field(description="dedupe key, stable across platform retries")
    kind: Literal["message", "event"] = "message"
    event: str | None = None
    chat: Chat
    sender: Sender
    text: str = ""
    mentioned: bool = False
    attachments: list[Attachment] = Field(default_factory=list)
    reply_handle: ReplyHandle | None = None
    received_at: datetime = Field(default_factory=utcnow)


class ReplyChunk(_Routed):
    schema_version: int = SCHEMA_VERSION
    reply_id: str
    inbound_id: str
    platform: str  # the bot's platform tag (imrelay.platforms)
    bot_id: str
    chat: Chat
    recipient: Sender
    reply_handle: ReplyHandle | None = None
    seq: int = Field(ge=0)
    delta: str = ""
    text: str | None = None  # the answer so far (deltas 0..seq), for platforms that edit in place
    final: bool = False
    full_text: str | None = None
    format: ReplyFormat = ReplyFormat.TEXT
    error: str | None = None
    received_at: datetime | None = None
    placeholder: str | None = None  # "thinking…": the first answer text is slow in coming
    media: list[MediaRef] = Field(default_factory=list)  # images of the answer (final chunk only), in order

    @property
    def msg_id(self) -> str:
        """The JetStream dedupe id: one final per reply, one of each delta sequence number."""
        if self.placeholder is not None:
            return f"{self.reply_id}:placeholder"
        return f"{self.reply_id}:final" if self.final else f"{self.reply_id}:{self.seq}"


class ConnectionRequest(_Event):
    """Send ``payload`` on a bot's long connection: the sender's request to the connector replica holding
    it. The payload is in the platform's own terms (its package writes and reads it)."""

    schema_version: int = SCHEMA_VERSION
    platform: str  # the bot's platform tag: with ``bot_id``, the subject (``imrelay.conn.<platform>.<bot>``)
    bot_id: str
    payload: dict[str, Any]
    timeout_seconds: float | None = Field(default=None, gt=0)  # the sender stops waiting then; so does the
    # connector (a later retry sends it again)

    @classmethod
    def parse(cls, data: bytes, platform: str, bot_id: str) -> ConnectionRequest:
        """Read a request sent to a bot's subject; also the bare payload earlier senders sent."""
        raw = json.loads(data)
        if isinstance(raw, dict) and "payload" not in raw and "bot_id" not in raw:
            raw = {"platform": platform, "bot_id": bot_id, "payload": raw}
        return cls.model_validate(raw)


class ConnectionAnswer(_Event):
    """Whether the platform took what was sent (the wire form is unchanged since the first version)."""

    ok: bool
    code: int | str | None = None  # the platform's answer code, or the name of the error on our side
