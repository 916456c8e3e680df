"""Where a Discord answer goes: the interaction's original response, by its token (valid 15 minutes)."""

from __future__ import annotations

from typing import Literal

from ..handle import ReplyHandleBase, Secret


class DiscordHandle(ReplyHandleBase):
    kind: Literal["discord"] = "discord"
    application_id: str
    interaction_token: Secret
