"""Builders shared by the unit tests: settings around a few bots, without a configuration file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imrelay.config import Settings, parse_settings

WECOM_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters, as WeCom's EncodingAESKey
WECOM_CORP, WECOM_AGENT = "wwtest", "1000002"


def wecom_app_bot(bot_id: str = "app", **over: Any) -> dict[str, Any]:
    """A WeCom self-built app bot as the configuration file holds it; ``over`` replaces top-level keys."""
    bot: dict[str, Any] = {
        "id": bot_id,
        "platform": "wecom_app",
        "credentials": {
            "corp_id": WECOM_CORP,
            "agent_id": WECOM_AGENT,
            "secret": "s",
            "token": "tok",
            "encoding_aes_key": WECOM_KEY,
        },
    }
    return {**bot, **over}


def make_settings(
    bots: Sequence[dict[str, Any]] = (), env: dict[str, str] | None = None, **sections: Any
) -> Settings:
    """Settings from ``bots`` and top-level ``sections`` (``ingress={...}``, ``sender={...}``), with no
    environment variables unless ``env`` gives some."""
    return parse_settings({**sections, "bots": list(bots)}, env or {})
