"""Answer streams a platform polls, shared by the ingress and the sender through the ``imrelay_streams`` KV
bucket.

Some platforms show an answer by polling: the ingress's first reply to a message names a stream, then the
platform keeps calling back with refresh requests, and whichever ingress replica receives one answers with
the content accumulated so far — which the sender keeps up to date here — until ``finish``. A finished
stream may name images of the answer (references into the media bucket) for the last poll answer to show.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from nats.js.kv import KeyValue

from .kv import create_if_absent, read
from .media import MediaRef
from .subjects import kv_key

__all__ = ["KVStreamStore", "StreamRecord", "StreamStore", "stream_id"]

CONTENT_LIMIT_BYTES = 20480  # the most one stream may show (the polling platform's limit)
KEY_PREFIX = "aibot"  # keys written by earlier versions keep their name


def stream_id(bot_id: str, msgid: str) -> str:
    """The stream of a message: the same for every platform retry of it."""
    return hashlib.sha256(f"{bot_id}\x00{msgid}".encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class StreamRecord:
    content: str
    finish: bool
    updated_at: float
    media: tuple[MediaRef, ...] = ()  # images shown with the finished content


class StreamStore(Protocol):
    async def get(self, bot_id: str, sid: str) -> StreamRecord | None: ...

    async def open(self, bot_id: str, sid: str) -> None: ...

    async def put(
        self, bot_id: str, sid: str, content: str, finish: bool, media: Sequence[MediaRef] = ()
    ) -> None: ...


class KVStreamStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @staticmethod
    def key(bot_id: str, sid: str) -> str:
        return kv_key(KEY_PREFIX, bot_id, sid)

    async def get(self, bot_id: str, sid: str) -> StreamRecord | None:
        entry = await read(self.kv, self.key(bot_id, sid))
        if entry is None:
            return None
        try:
            d = json.loads(entry.value or b"{}")
            media = tuple(MediaRef.model_validate(m) for m in d.get("media") or ())
            return StreamRecord(str(d["content"]), bool(d["finish"]), float(d["updated_at"]), media)
        except (ValueError, KeyError, TypeError):
            return None

    async def open(self, bot_id: str, sid: str) -> None:
        """Start an empty stream unless it exists (a retried message keeps its stream)."""
        body = json.dumps({"content": "", "finish": False, "updated_at": time.time()}).encode()
        await create_if_absent(self.kv, self.key(bot_id, sid), body)

    async def put(
        self, bot_id: str, sid: str, content: str, finish: bool, media: Sequence[MediaRef] = ()
    ) -> None:
        data = content.encode()[:CONTENT_LIMIT_BYTES].decode("utf-8", errors="ignore")
        record: dict[str, object] = {"content": data, "finish": finish, "updated_at": time.time()}
        if media:
            record["media"] = [m.model_dump(mode="json") for m in media]
        body = json.dumps(record, ensure_ascii=False).encode()
        await self.kv.put(self.key(bot_id, sid), body)
