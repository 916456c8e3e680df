"""Conversation memory in the ``imrelay_memory`` KV bucket, so any worker replica continues any
conversation.

A conversation is a chat (and, in groups, one member's thread with the bot unless configured otherwise).
Its record holds the last turns — trimmed to ``max_turns`` and ``max_chars``, oldest first out — and the
backend's session (e.g. Dify's ``conversation_id``). The bucket's TTL forgets idle conversations. A turn is
written only once its answer is complete, with compare-and-set so concurrent answers do not lose turns.
Each turn records who asked, so that one user's turns can be erased (``imrelay forget``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from imrelay.config import MemoryConfig
from imrelay.events import ChatType, InboundMessage
from imrelay.kv import DELETE, Delete, read, read_modify_write
from imrelay.subjects import kv_key

from .backends import ChatMessage

__all__ = ["Conversation", "MemoryStore", "Turn", "conversation_key", "trim"]


@dataclass(frozen=True, slots=True)
class Turn:
    user: str
    assistant: str
    sender: str = ""  # the platform user who asked (records written before it was kept: unknown)


@dataclass(slots=True)
class Conversation:
    turns: list[Turn] = field(default_factory=list)
    session: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {"turns": [[t.user, t.assistant, t.sender] for t in self.turns], "session": self.session},
            ensure_ascii=False,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes | None) -> Conversation:
        try:
            d = json.loads(data or b"{}")
            return cls(
                turns=[Turn(*(str(x) for x in t[:3])) for t in d.get("turns", [])],
                session={str(k): str(v) for k, v in (d.get("session") or {}).items()},
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def messages(self) -> list[ChatMessage]:
        out: list[ChatMessage] = []
        for t in self.turns:
            out += [ChatMessage("user", t.user), ChatMessage("assistant", t.assistant)]
        return out


def trim(turns: list[Turn], max_turns: int, max_chars: int) -> list[Turn]:
    """The most recent turns within both limits (at least the newest one, whatever its size)."""
    kept: list[Turn] = []
    size = 0
    for turn in reversed(turns[-max_turns:]):
        size += len(turn.user) + len(turn.assistant)
        if kept and size > max_chars:
            break
        kept.append(turn)
    return list(reversed(kept))


def conversation_key(msg: InboundMessage, per_user_in_groups: bool) -> str:
    parts = [msg.platform, msg.bot_id, msg.chat.id]
    if msg.chat.type is ChatType.GROUP and per_user_in_groups:
        parts.append(msg.sender.id)
    return kv_key("conv", *parts)


class MemoryStore:
    def __init__(self, kv: KeyValue, cfg: MemoryConfig) -> None:
        self.kv = kv
        self.cfg = cfg

    async def load(self, key: str) -> Conversation:
        entry = await read(self.kv, key)
        return Conversation() if entry is None else Conversation.from_json(entry.value)

    async def remember(self, key: str, turn: Turn, session: dict[str, str]) -> None:
        def add(value: bytes | None) -> bytes:
            conv = Conversation() if value is None else Conversation.from_json(value)
            conv.turns = trim([*conv.turns, turn], self.cfg.max_turns, self.cfg.max_chars)
            conv.session.update(session)
            return conv.to_json()

        # another answer in this conversation stored meanwhile: add the turn to that one
        await read_modify_write(self.kv, key, add)

    async def forget(self, key: str) -> None:
        try:
            await self.kv.delete(key)
        except KeyNotFoundError:
            pass

    async def forget_user(self, platform: str, bot_id: str, user: str) -> int:
        """Erase what the bot remembers of ``user``: their one-to-one conversations and their own threads
        in groups whole, their turns in shared group conversations. Returns how many records changed."""
        prefix = kv_key("conv", platform, bot_id) + "."
        token = kv_key(user)
        try:
            keys = [k for k in await self.kv.keys() if k.startswith(prefix)]
        except NoKeysError:
            return 0

        def without_user(value: bytes | None) -> bytes | Delete | None:
            if value is None:
                return None
            conv = Conversation.from_json(value)
            kept = [t for t in conv.turns if t.sender != user]
            if len(kept) == len(conv.turns):
                return None
            if not kept:
                return DELETE
            conv.turns = kept
            return conv.to_json()

        changed = 0
        for key in keys:
            if key == prefix + token or key.endswith("." + token):  # the user's own conversation
                await self.forget(key)
                changed += 1
            elif await read_modify_write(self.kv, key, without_user):
                changed += 1
        return changed
