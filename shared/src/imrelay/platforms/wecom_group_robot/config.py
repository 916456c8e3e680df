"""A WeCom group robot's bot entry."""

from __future__ import annotations

from typing import Literal

from ...bots import BotBase
from ..wecom.config import WeComBotCredentials


class WeComGroupRobotBot(BotBase):
    platform: Literal["wecom_group_robot"]
    credentials: WeComBotCredentials
