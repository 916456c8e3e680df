"""A Feishu or Lark bot's entry (the same protocol on two domains)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from ...bots import BotBase, PathValueError
from ...sections import ConfigModel


class FeishuCredentials(ConfigModel):
    app_id: str = Field(description="The app's App ID.")
    app_secret: SecretStr = Field(description="The app's App Secret (fetches tenant access tokens).")
    encrypt_key: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "The event subscription's Encrypt Key (events are signed and encrypted only when it is set)."
        ),
    )
    verification_token: SecretStr = Field(description="The event subscription's Verification Token.")


class FeishuBot(BotBase):
    platform: Literal["feishu", "lark"]
    credentials: FeishuCredentials
    # Without an Encrypt Key, Feishu/Lark neither signs nor encrypts events: anyone who learns the
    # verification token can post any event, and a body altered in transit goes unnoticed. Such a bot is
    # refused unless this is set explicitly (and then a warning is logged at start).
    allow_unsigned_events: bool = False

    @model_validator(mode="after")
    def _signed_events(self) -> FeishuBot:
        if not self.credentials.encrypt_key.get_secret_value() and not self.allow_unsigned_events:
            raise PathValueError(
                "credentials.encrypt_key",
                "an Encrypt Key is required (Feishu/Lark signs events only when one is set); "
                "set allow_unsigned_events: true to accept unsigned events anyway",
            )
        return self

    def start_warnings(self) -> list[str]:
        if self.allow_unsigned_events and not self.credentials.encrypt_key.get_secret_value():
            return [
                "accepts unsigned events (allow_unsigned_events): anyone who learns its verification "
                "token can post events; set an Encrypt Key"
            ]
        return []
