"""The simulator's WeCom media, for the app and the group robot, at WeCom's strictest:

* :func:`serve` answers ``media/get``: the file (``Content-Disposition`` with its name), a single
  ``Range`` as ``206`` with ``Content-Range``, ``416`` for a range past the end, errcode 830002 for a
  file above 20 MB asked without a ``Range``. The bytes are streamed and counted as sent
  (``/sim/stats`` ``wecom_media_bytes``), stopping when the reader leaves.
* :func:`take_upload` reads an upload (``media/upload``, ``webhook/upload_media``): the multipart field
  ``media`` (41005 without it), ``type`` one of the kinds the API takes (40004), at least 5 bytes and at
  most the type's size (40006 file, 40009 image, 40010 voice, 40011 video), the type read from the bytes
  (40005: image JPG/PNG, voice AMR, video MP4), refused on its declared length before it is read. The
  file is kept in the simulator's store (``origin="upload"``); its ``media_id`` lives three days
  (:data:`MEDIA_LIFETIME`) for the one who uploaded it (:func:`uploaded`: 40007 otherwise).
* ``GET /sim/wecom/pic/{id}``: a user's picture by URL (an app image's ``PicUrl``, a robot message's
  ``ImageUrl``), streamed and counted the same way.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from imrelay.media import simstore
from imrelay.media.sniff import sniff

from .codes import WeComCode
from .sim_api import err

MB = 1024 * 1024
WHOLE_LIMIT = 20 * MB  # media/get without Range
MEDIA_LIFETIME = 3 * 86400.0
MIN_BYTES = 5
CHUNK = 64 * 1024

# type -> (size limit, errcode above it, types it takes from the bytes (None: any))
UPLOAD_RULES: dict[str, tuple[int, int, frozenset[str] | None]] = {
    "image": (10 * MB, WeComCode.INVALID_IMAGE_SIZE, frozenset({"image/jpeg", "image/png"})),
    "voice": (2 * MB, WeComCode.INVALID_VOICE_SIZE, frozenset({"audio/amr"})),
    "video": (10 * MB, WeComCode.INVALID_VIDEO_SIZE, frozenset({"video/mp4"})),
    "file": (20 * MB, WeComCode.INVALID_FILE_SIZE, None),
}
ROBOT_IMAGE_LIMIT = 2 * MB  # an image message's bytes, before base64

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _owners(state: Any) -> dict[str, tuple[str, float]]:
    """media_id -> (who uploaded it, when it expires)."""
    owners: dict[str, tuple[str, float]] | None = getattr(state, "wecom_media", None)
    if owners is None:
        owners = {}
        state.wecom_media = owners
    return owners


def uploaded(state: Any, media_id: str, owner: str, now: float) -> simstore.MediaItem | None:
    """A file ``owner`` uploaded, while its ``media_id`` lives."""
    found = _owners(state).get(media_id)
    if found is None or found[0] != owner or found[1] <= now:
        return None
    return simstore.get(state, media_id)


def readable(state: Any, media_id: str, now: float) -> simstore.MediaItem | None:
    """What ``media/get`` serves: a user's file, or an upload while it lives."""
    item = simstore.get(state, media_id)
    if item is None:
        return None
    if item.origin == "upload":
        found = _owners(state).get(media_id)
        if found is None or found[1] <= now:
            return None
    return item


def _disposition(name: str) -> str:
    ascii_name = name.encode("ascii", "replace").decode("ascii").replace('"', "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


def _stream(
    state: Any, request: Request, data: bytes, status: int, headers: dict[str, str], mime: str
) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), CHUNK):
            if await request.is_disconnected():
                return
            piece = data[i : i + CHUNK]
            state.stats["wecom_media_bytes"] += len(piece)
            yield piece

    return StreamingResponse(
        body(), status_code=status, media_type=mime, headers={"Content-Length": str(len(data)), **headers}
    )


def serve(state: Any, request: Request, item: simstore.MediaItem) -> Response:
    """``media/get``'s answer for ``item``, honouring a single ``Range``."""
    data = item.data
    headers = {"Content-Disposition": _disposition(item.name), "Accept-Ranges": "bytes"}
    asked = request.headers.get("range")
    if asked is None:
        if len(data) > WHOLE_LIMIT:
            return err(WeComCode.MEDIA_NEEDS_RANGE, "file size exceeds 20M, use Range to download")
        return _stream(state, request, data, 200, headers, item.mime)
    m = _RANGE.match(asked.strip())
    if m is None or not (m.group(1) or m.group(2)):
        return Response(status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
    else:  # the last n bytes
        start, end = max(len(data) - int(m.group(2)), 0), len(data) - 1
    if start >= len(data) or end < start:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return _stream(state, request, data[start : end + 1], 206, headers, item.mime)


async def take_upload(
    state: Any, request: Request, kinds: frozenset[str], owner: str, clock: Callable[[], float]
) -> Response:
    """An upload's checks, then the file kept and its ``media_id`` answered."""
    kind = request.query_params.get("type", "")
    if kind not in kinds:
        return err(WeComCode.INVALID_MEDIA_TYPE, f"invalid media type: {kind!r}")
    limit, too_large, types = UPLOAD_RULES[kind]
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + 64 * 1024:
        return err(too_large, "invalid media size")
    try:
        async with request.form(max_part_size=limit + 1) as form:
            part = form.get("media")
            if part is None or isinstance(part, str):
                return err(41005, "media data missing")
            data = await part.read()
            name = part.filename or "media"
    except Exception:  # not multipart, or a part over the limit
        return err(too_large, "invalid media size")
    if len(data) < MIN_BYTES:
        return err(WeComCode.INVALID_FILE_SIZE if data else WeComCode.EMPTY_MEDIA, "invalid media size")
    if len(data) > limit:
        return err(too_large, "invalid media size")
    mime = sniff(data)
    if types is not None and mime not in types:
        return err(WeComCode.INVALID_FILE_TYPE, f"invalid file type for {kind}: {mime}")
    item = simstore.put(state, data, name=name, kind=kind, origin="upload", mime=mime)
    now = clock()
    _owners(state)[item.id] = (owner, now + MEDIA_LIFETIME)
    state.stats["wecom_uploads"] += 1
    return JSONResponse(
        {"errcode": 0, "errmsg": "ok", "type": kind, "media_id": item.id, "created_at": str(int(now))}
    )


def keep_image(state: Any, data: bytes, name: str = "image") -> simstore.MediaItem:
    """An image a robot sent inline, kept like an upload."""
    mime = sniff(data)
    ext = {"image/png": ".png", "image/jpeg": ".jpg"}.get(mime, "")
    return simstore.put(state, data, name=name + ext, kind="image", origin="upload", mime=mime)


def pic_routes(state: Any) -> list[BaseRoute]:
    """``GET /sim/wecom/pic/{id}``: a user's picture by URL (an app's ``PicUrl``, a robot's
    ``ImageUrl``), once for both bot kinds."""
    if getattr(state, "wecom_pics", False):
        return []
    state.wecom_pics = True

    async def pic(request: Request) -> Response:
        item = simstore.get(state, request.path_params["id"])
        if item is None:
            return Response("not found", status_code=404)
        return _stream(state, request, item.data, 200, {}, item.mime)

    return [Route("/sim/wecom/pic/{id}", pic, methods=["GET"])]
