"""The simulator's media: files users send (put in with ``POST /sim/media``, served by every platform's
simulated download API) and files bots upload (kept by the platforms' simulated upload APIs), so tests can
compare the exact bytes at both ends.

* ``POST /sim/media?name=&kind=`` with the bytes: stored, answered ``{id, size, sha256, md5, mime}``.
* ``GET /sim/media/{id}``: the bytes (where a platform hands out a URL, the simulator's URL is this one).
* ``GET /sim/media`` lists what is stored (without the bytes), ``?origin=upload`` what bots uploaded.

A platform package's simulated routes use :func:`put` and :func:`get` on the shared state.
"""

from __future__ import annotations

import hashlib
import mimetypes
import secrets
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["MediaItem", "get", "put", "routes"]

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


def routes(state: Any) -> list[Route]:
    async def upload(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_SIM_MEDIA:
            return JSONResponse({"error": "too large for the simulator"}, status_code=413)
        q = request.query_params
        item = put(
            state,
            body,
            name=q.get("name", "file.bin"),
            kind=q.get("kind", "file"),
            origin="user",
            mime=q.get("mime"),
        )
        return JSONResponse(item.describe())

    async def download(request: Request) -> Response:
        item = get(state, request.path_params["id"])
        if item is None:
            return JSONResponse({"error": "no such media"}, status_code=404)
        return Response(item.data, media_type=item.mime)

    async def listing(request: Request) -> Response:
        origin = request.query_params.get("origin")
        return JSONResponse([i.describe() for i in _store(state).values() if origin in (None, i.origin)])

    return [
        Route("/sim/media", upload, methods=["POST"]),
        Route("/sim/media", listing, methods=["GET"]),
        Route("/sim/media/{id}", download, methods=["GET"]),
    ]
