"""A WeCom AI bot's entry (callback or long-connection mode)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ...bots import BotBase
from ..wecom.config import WeComBotCredentials


class WeComAIBot(BotBase):
    platform: Literal["wecom_aibot"]
    credentials: WeComBotCredentials
    # long_connection mode: the WebSocket the connector dials (private deployments show their own)
    ws_url: str = "wss://openws.work.weixin.qq.com"

    @model_validator(mode="after")
    def _long_connection_credentials(self) -> WeComAIBot:
        if self.mode == "long_connection" and (not self.credentials.bot_id or not self.credentials.secret):
            raise ValueError("long_connection mode needs credentials.bot_id and credentials.secret")
        return self
