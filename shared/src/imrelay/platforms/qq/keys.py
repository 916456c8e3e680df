"""QQ derives a bot's Ed25519 signing key from its secret: the secret repeated to at least 32 characters and
cut to 32 bytes is the RFC 8032 seed."""

from __future__ import annotations

__all__ = ["qq_seed"]


def qq_seed(secret: str) -> bytes:
    if not secret:
        raise ValueError("empty bot secret")
    text = secret
    while len(text) < 32:
        text += secret
    return text[:32].encode("utf-8")[:32]
