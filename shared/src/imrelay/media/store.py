"""The media bucket: a JetStream Object Store whose entries expire after ``media.ttl_seconds``.

An entry's name is chosen by its user so that doing the same work again finds it: the worker stores a
message's ``n``-th attachment as ``in/<inbound id>/<n>`` (a redelivered message reuses it instead of
downloading again) and an answer's ``n``-th image as ``out/<reply id>/<n>``. The :class:`MediaRef` is kept
in the entry's description, so :meth:`MediaStore.find` needs no other record.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from nats.js.errors import NotFoundError, ObjectDeletedError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from . import MediaKind, MediaRef

__all__ = ["MediaStore", "ObjectMediaStore"]


class MediaStore(Protocol):
    async def find(self, key: str) -> MediaRef | None: ...

    async def put(self, key: str, data: bytes, *, kind: MediaKind, name: str, mime: str) -> MediaRef: ...

    async def get(self, ref: MediaRef) -> bytes: ...


class ObjectMediaStore:
    def __init__(self, bucket: ObjectStore) -> None:
        self.bucket = bucket

    async def find(self, key: str) -> MediaRef | None:
        try:
            info = await self.bucket.get_info(key)
        except (ObjectNotFoundError, ObjectDeletedError, NotFoundError):
            return None
        if info.deleted or not info.description:
            return None
        try:
            return MediaRef.model_validate_json(info.description)
        except ValueError:
            return None

    async def put(self, key: str, data: bytes, *, kind: MediaKind, name: str, mime: str) -> MediaRef:
        from nats.js.api import ObjectMeta

        ref = MediaRef(
            kind=kind, key=key, name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest(), mime=mime
        )
        await self.bucket.put(key, data, meta=ObjectMeta(name=key, description=ref.model_dump_json()))
        return ref

    async def get(self, ref: MediaRef) -> bytes:
        result = await self.bucket.get(ref.key)
        data = result.data or b""
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ValueError(f"media {ref.key}: the stored bytes are not the ones referred to")
        return data
