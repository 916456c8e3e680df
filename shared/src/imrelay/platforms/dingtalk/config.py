"""A DingTalk robot's entry."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from ...bots import BotBase
from ...sections import ConfigModel


class DingTalkCredentials(ConfigModel):
    app_key: str = Field(description="The app's AppKey (Client ID).")
    app_secret: SecretStr = Field(
        description="The app's AppSecret (Client Secret): checks callback "
        "signatures and fetches access tokens."
    )
    # The robot's code, checked against every callback's ``robotCode``; an app robot's code is its AppKey.
    robot_code: str | None = None

    @property
    def expected_robot_code(self) -> str:
        return self.robot_code or self.app_key


class DingTalkBot(BotBase):
    platform: Literal["dingtalk"]
    credentials: DingTalkCredentials
    # Stream mode (mode: long_connection): a socket that brings no frame for this long (DingTalk's own
    # pings included) is replaced by a new one, opened before the silent one is closed
    stream_idle_seconds: float = Field(default=120.0, gt=0)
