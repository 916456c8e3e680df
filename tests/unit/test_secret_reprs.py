"""No object built from a configuration shows a secret in its ``repr()`` or ``str()``: every ingress adapter,
sender delivery, LLM backend, token cache and connector socket, built from a config whose every credential
is a distinctive marker."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from imrelay.config import BotConfig, Settings, parse_settings
from imrelay.delivery import DeliveryContext
from imrelay.delivery.tokens import TokenCache, TokenRecord
from imrelay.platforms import adapter_for, delivery_for
from imrelay.platforms.wecom_aibot.config import WeComAIBot
from imrelay.platforms.wecom_aibot.connection import AIBotConnection
from imrelay_worker.backends import build_backend

from ..helpers import FakeStreamStore

# Every secret is a marker; 43-character ones stand in for WeCom's EncodingAESKey.
MARK = "MARKERSECRET"
AES = (MARK + "aes" + "x" * 43)[:43]
AES2 = (MARK + "aez" + "y" * 43)[:43]
DISCORD_PUBLIC_KEY = "ab" * 32


def marker_settings() -> Settings:
    def secret(name: str) -> str:
        return f"{MARK}-{name}"

    bots: list[dict[str, Any]] = [
        {
            "id": "app",
            "platform": "wecom_app",
            "credentials": {
                "corp_id": "ww1",
                "agent_id": "1000002",
                "secret": secret("corpsecret"),
                "token": secret("apptoken"),
                "encoding_aes_key": AES,
            },
        },
        {
            "id": "robot",
            "platform": "wecom_group_robot",
            "credentials": {"token": secret("robottoken"), "encoding_aes_key": AES2},
        },
        {
            "id": "aibot",
            "platform": "wecom_aibot",
            "mode": "long_connection",
            "credentials": {
                "token": secret("aibottoken"),
                "encoding_aes_key": AES,
                "bot_id": "aib1",
                "secret": secret("aibotsecret"),
            },
        },
        {
            "id": "feishu",
            "platform": "feishu",
            "credentials": {
                "app_id": "cli_1",
                "app_secret": secret("feishusecret"),
                "encrypt_key": secret("encryptkey"),
                "verification_token": secret("verification"),
            },
        },
        {
            "id": "lark",
            "platform": "lark",
            "credentials": {
                "app_id": "cli_2",
                "app_secret": secret("larksecret"),
                "encrypt_key": secret("larkencrypt"),
                "verification_token": secret("larkverification"),
            },
        },
        {
            "id": "dingtalk",
            "platform": "dingtalk",
            "credentials": {"app_key": "ding1", "app_secret": secret("dingsecret")},
        },
        {"id": "qq", "platform": "qq", "credentials": {"app_id": "102", "app_secret": secret("qqsecret")}},
        {
            "id": "discord",
            "platform": "discord",
            "credentials": {
                "application_id": "123",
                "public_key": DISCORD_PUBLIC_KEY,
                "bot_token": secret("bottoken"),
            },
        },
    ]
    backends = {
        "openai": {"kind": "openai", "base_url": "http://llm", "model": "m", "api_key": secret("openai")},
        "dify": {"kind": "dify", "base_url": "http://llm", "api_key": secret("dify")},
        "fastgpt": {"kind": "fastgpt", "base_url": "http://llm", "api_key": secret("fastgpt")},
        "default": {"kind": "echo"},
    }
    return parse_settings({"backends": backends, "bots": bots}, {})


def assert_no_secret(obj: object) -> None:
    for shown in (repr(obj), str(obj)):
        assert MARK not in shown, f"{type(obj).__name__} shows a secret: {shown}"
        assert AES not in shown and AES2 not in shown


@pytest.fixture
def settings() -> Settings:
    return marker_settings()


def test_every_credential_is_a_marker(settings: Settings) -> None:
    from imrelay.redact import _secret_values

    values = list(_secret_values(settings))
    assert len(values) == 20 and all(MARK in v for v in values)


@pytest.mark.parametrize("bot_id", ["app", "robot", "aibot", "feishu", "lark", "dingtalk", "qq", "discord"])
def test_ingress_adapters(settings: Settings, bot_id: str) -> None:
    bot = settings.bot(bot_id)
    assert bot is not None
    assert_no_secret(adapter_for(bot))


def _deliveries(settings: Settings) -> list[object]:
    client = httpx.AsyncClient()
    tokens = TokenCache(kv=object())  # type: ignore[arg-type]  # never called here
    ctx = DeliveryContext(
        settings=settings,
        client=client,
        tokens=tokens,
        deliveries=object(),  # type: ignore[arg-type]
        answer_streams=FakeStreamStore(),
    )
    return [delivery_for(bot, ctx) for bot in settings.bots]


def test_sender_deliveries(settings: Settings) -> None:
    deliveries = _deliveries(settings)
    assert len(deliveries) == len(settings.bots)
    for delivery in deliveries:
        assert_no_secret(delivery)


def test_llm_backends(settings: Settings) -> None:
    client = httpx.AsyncClient()
    for name, cfg in settings.backends.items():
        backend = build_backend(name, cfg, client)
        assert_no_secret(backend)
        assert_no_secret(cfg)


def test_token_cache_and_records() -> None:
    assert_no_secret(TokenCache(kv=object()))  # type: ignore[arg-type]
    assert_no_secret(TokenRecord(token=f"{MARK}-issued", expires_at=1.0, fetched_at=0.0))


def test_connector_socket_and_configs(settings: Settings) -> None:
    aibot = settings.bot("aibot")
    assert isinstance(aibot, WeComAIBot)

    async def build() -> AIBotConnection:
        return AIBotConnection(aibot, settings.connector)

    assert_no_secret(asyncio.run(build()))
    bots: list[BotConfig] = list(settings.bots)
    for obj in (settings, *bots, *(b.credentials for b in bots)):
        assert_no_secret(obj)
