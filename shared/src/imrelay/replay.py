"""Signatures that may be used once only, remembered cluster-wide in the ``imrelay_replay`` KV bucket.

A platform that signs a callback's timestamp, not its body: without this record, one observed ``(timestamp,
sign)`` pair would carry any body for as long as the timestamp is accepted. The first request with a pair
records the digest of its body; a later request with the same pair is accepted only with the same body (the
platform retrying, which the message store then drops as a duplicate).
"""

from __future__ import annotations

from nats.js.kv import KeyValue

from .kv import create_if_absent

__all__ = ["KVReplayGuard"]


class KVReplayGuard:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def claim(self, key: str, fingerprint: str) -> bool:
        """Record ``key`` with ``fingerprint``; True if it is new or was recorded with that fingerprint."""
        if await create_if_absent(self.kv, key, fingerprint.encode("ascii")) is not None:
            return True
        entry = await self.kv.get(key)
        return entry.value == fingerprint.encode("ascii")
