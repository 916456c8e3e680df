"""Where a QQ answer goes: a passive reply to the message, in the kind of chat it came from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from ..handle import ReplyHandleBase

TargetKind = Literal["group", "c2c", "channel", "dm"]


class QQHandle(ReplyHandleBase):
    kind: Literal["qq"] = "qq"
    target_kind: TargetKind  # a group, a direct (c2c) chat, a guild channel, a guild direct message
    target: str  # the group / user openid, channel id or guild id the reply is posted to
    msg_id: str  # the message replied to
    guild_id: str = ""

    v1_renames: ClassVar[Mapping[str, str]] = {"kind": "target_kind"}
