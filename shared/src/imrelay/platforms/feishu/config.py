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
    verification_token: SecretStr = Field(
        default=SecretStr(""),
        description="The event subscription's Verification Token (callbacks only).",
    )


class FeishuBot(BotBase):
    platform: Literal["feishu", "lark"]
    credentials: FeishuCredentials
    # Without an Encrypt Key, Feishu/Lark neither signs nor encrypts events: anyone who learns the
    # verification token can post any event, and a body altered in transit goes unnoticed. Such a bot is
    # refused unless this is set explicitly (and then a warning is logged at start).
    allow_unsigned_events: bool = False
    # mode: long_connection: an event created longer ago than this (Feishu re-pushes events after
    # reconnects, sometimes hours later) is acknowledged and counted ("stale"), not answered; 0: never
    stale_after_seconds: float = Field(default=1800.0, ge=0)

    @model_validator(mode="after")
    def _signed_events(self) -> FeishuBot:
        if self.mode == "long_connection":
            # the events come over the TLS connection the app's id and secret opened: no signature, no
            # token, no encryption on that channel
            if not self.credentials.app_id or not self.credentials.app_secret.get_secret_value():
                raise PathValueError("credentials", "a long connection needs app_id and app_secret")
            return self
        if not self.credentials.verification_token.get_secret_value():
            raise PathValueError(
                "credentials.verification_token", "the Verification Token is required in callback mode"
            )
        if not self.credentials.encrypt_key.get_secret_value() and not self.allow_unsigned_events:
            raise PathValueError(
                "credentials.encrypt_key",
                "an Encrypt Key is required (Feishu/Lark signs events only when one is set); "
                "set allow_unsigned_events: true to accept unsigned events anyway",
            )
        return self

    def start_warnings(self) -> list[str]:
        if (
            self.mode == "callback"
            and self.allow_unsigned_events
            and not self.credentials.encrypt_key.get_secret_value()
        ):
            return [
                "accepts unsigned events (allow_unsigned_events): anyone who learns its verification "
                "token can post events; set an Encrypt Key"
            ]
        return []
