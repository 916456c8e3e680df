"""What model providers learn about a user: a keyed hash, stable per user and bot, instead of the
platform's user id (``worker.pseudonymize_users``, on by default).

The key is ``worker.pseudonym_key`` when set; otherwise it is derived from the bot's own credentials, which
the provider never sees (rotating them changes the pseudonyms; set the key to keep them).
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import BaseModel, SecretStr

from imrelay.config import BotConfig, WorkerConfig

__all__ = ["Pseudonyms", "pseudonym"]


def pseudonym(key: bytes, value: str, prefix: str) -> str:
    """``<prefix>_`` + 32 hex characters of HMAC-SHA256(key, value)."""
    return f"{prefix}_{hmac.new(key, value.encode('utf-8'), hashlib.sha256).hexdigest()[:32]}"


def _secrets(model: BaseModel) -> list[str]:
    return [v.get_secret_value() for _, v in sorted(model) if isinstance(v, SecretStr)]


class Pseudonyms:
    """The identifiers a bot's backend receives: ``user`` and ``conversation`` ids."""

    def __init__(self, cfg: WorkerConfig, bot: BotConfig) -> None:
        self.enabled = cfg.pseudonymize_users
        if cfg.pseudonym_key is not None:
            material = cfg.pseudonym_key.get_secret_value()
        else:
            material = "\0".join(_secrets(bot.credentials))
        self._key = hashlib.sha256(f"imrelay-pseudonym\0{bot.id}\0{material}".encode()).digest()

    def __repr__(self) -> str:
        return f"Pseudonyms(enabled={self.enabled}, key=***)"

    def user(self, platform_user: str) -> str:
        return pseudonym(self._key, platform_user, "u") if self.enabled else platform_user

    def conversation(self, key: str) -> str:
        return pseudonym(self._key, key, "c") if self.enabled else key
