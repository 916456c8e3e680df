"""A WeCom self-built app's bot entry."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from ...bots import BotBase
from ...sections import ConfigModel
from ..wecom.config import AesKey


class WeComAppCredentials(ConfigModel):
    corp_id: str = Field(min_length=1, description="The CorpID (我的企业 → 企业信息).")
    agent_id: str = Field(min_length=1, description="The app's AgentId.")
    secret: SecretStr = Field(description="The app's Secret (fetches access tokens).")
    token: SecretStr = Field(description="The callback Token (接收消息 → API 接收).")
    encoding_aes_key: AesKey = Field(description="The callback EncodingAESKey (43 characters).")

    @field_validator("agent_id", mode="before")
    @classmethod
    def _agent_id_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v


class WeComAppBot(BotBase):
    platform: Literal["wecom_app"]
    credentials: WeComAppCredentials
