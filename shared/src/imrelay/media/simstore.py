"""The simulator's file store, shared by every platform's simulated API (``platforms/<name>/sim*.py``):
files simulated users send (served by the platforms' download APIs) and files bots upload (kept by their
upload APIs), so tests compare the exact bytes at both ends. The routes are in ``imrelay_sim.media``."""

from __future__ import annotations

import hashlib
import mimetypes
import secrets
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_SIM_MEDIA", "MediaItem", "get", "put"]

MAX_SIM_MEDIA = 64 * 1024 * 1024  # the simulator keeps files up to this size


@dataclass(frozen=True, slots=True)
class MediaItem:
    id: str
    data: bytes
    name: str
    kind: str
    origin: str  # "user": a file a simulated user sent; "upload": a file a bot uploaded
    mime: str = "application/octet-stream"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()  # noqa: S324 - the platforms' own checksum

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "origin": self.origin,
            "size": len(self.data),
            "sha256": self.sha256,
            "md5": self.md5,
            "mime": self.mime,
        }


def _store(state: Any) -> dict[str, MediaItem]:
    store: dict[str, MediaItem] | None = getattr(state, "media", None)
    if store is None:
        store = {}
        state.media = store
    return store


def put(
    state: Any,
    data: bytes,
    *,
    name: str,
    kind: str,
    origin: str,
    mime: str | None = None,
    id: str | None = None,
) -> MediaItem:
    """Keep ``data``; its id (made up when not given) is what the platform's API knows it by."""
    item_id = id or f"sim{secrets.token_hex(12)}"
    guessed = mime or mimetypes.guess_type(name)[0] or "application/octet-stream"
    item = MediaItem(item_id, bytes(data), name, kind, origin, guessed)
    _store(state)[item_id] = item
    return item


def get(state: Any, item_id: str) -> MediaItem | None:
    return _store(state).get(item_id)
