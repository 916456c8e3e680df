"""Configuration pieces WeCom's bot kinds share."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr

from ...sections import ConfigModel

API_BASE = "https://qyapi.weixin.qq.com"


def _check_aes_key(v: SecretStr) -> SecretStr:
    if len(v.get_secret_value()) != 43:
        raise ValueError("EncodingAESKey must be exactly 43 characters")
    return v


AesKey = Annotated[SecretStr, AfterValidator(_check_aes_key)]


class WeComBotCredentials(ConfigModel):
    token: SecretStr = Field(description="The callback Token.")
    encoding_aes_key: AesKey = Field(description="The callback EncodingAESKey (43 characters).")
    bot_id: str | None = Field(default=None, description="The AI bot's BotID (long_connection mode).")
    secret: SecretStr | None = Field(default=None, description="The AI bot's Secret (long_connection mode).")


HINTS: dict[str, str] = {
    "60020": "wecom-60020",
    "40001": "wecom-40001",
    "40013": "wecom-40001",
    "40056": "wecom-40001",
    "40014": "wecom-40014",
    "42001": "wecom-40014",
    "45009": "wecom-45009",
}
# token endpoint error codes -> what to fix
CAUSES: dict[str, str] = {
    "60020": "this host's IP is not in the app's trusted IPs (企业可信IP): add the public IP this host calls "
    "WeCom from in the app's settings",
    "40001": "wrong secret (credentials.secret): copy the app's Secret again",
    "40013": "wrong corp id (credentials.corp_id)",
    "40056": "wrong agent id (credentials.agent_id)",
}
