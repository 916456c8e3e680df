"""Where a Discord answer goes: the interaction's original response, by its token (valid 15 minutes), for
``/ask``; or, for a message received on the Gateway (a mention or a DM), a reply to that message in its
channel (``channel_id`` + ``message_id``), sent with the bot token."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ..handle import ReplyHandleBase, Secret


class DiscordHandle(ReplyHandleBase):
    kind: Literal["discord"] = "discord"
    application_id: str
    interaction_token: Secret = ""  # an interaction's answer (``/ask``)
    channel_id: str = ""  # a Gateway message's answer: a reply in this channel ...
    message_id: str = ""  # ... referencing this message
    guild_id: str = ""  # empty for a DM
    # the largest file this interaction's answer may carry (the interaction's ``attachment_size_limit``);
    # 0: Discord's default
    attachment_size_limit: int = 0

    @model_validator(mode="after")
    def _somewhere(self) -> DiscordHandle:
        if not self.interaction_token and not (self.channel_id and self.message_id):
            raise ValueError("a Discord handle needs interaction_token, or channel_id and message_id")
        return self

    @property
    def is_message_reply(self) -> bool:
        return not self.interaction_token and bool(self.channel_id and self.message_id)
