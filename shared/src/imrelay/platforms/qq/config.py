"""A QQ bot's entry."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from ...bots import BotBase
from ...sections import ConfigModel


class QQCredentials(ConfigModel):
    app_id: str = Field(description="The bot's AppID.")
    app_secret: SecretStr = Field(
        description="The bot's AppSecret: checks callback signatures and fetches access tokens."
    )


class QQBot(BotBase):
    platform: Literal["qq"]
    credentials: QQCredentials
