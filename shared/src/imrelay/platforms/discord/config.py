"""A Discord application's entry."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from ...bots import BotBase
from ...sections import ConfigModel


class DiscordCredentials(ConfigModel):
    application_id: str = Field(description="The application's ID.")
    public_key: str  # the application's public key, 64 hex characters
    bot_token: SecretStr = Field(description="The bot's token.")

    @field_validator("public_key")
    @classmethod
    def _hex_key(cls, v: str) -> str:
        try:
            if len(bytes.fromhex(v)) == 32:
                return v.lower()
        except ValueError:
            pass
        raise ValueError("public_key must be the 64 hex characters shown in the Developer Portal")


class DiscordBot(BotBase):
    platform: Literal["discord"]
    credentials: DiscordCredentials
