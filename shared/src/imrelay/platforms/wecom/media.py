"""WeCom media, for the self-built app and the group robot: how a piece of media is sent (its message
type, or a file instead), ``media/get`` in ranges, uploads and what their answers mean.

* The app downloads a message's media with ``GET /cgi-bin/media/get?access_token&media_id``; errors come
  as a JSON ``errcode`` body. A file above 20 MB must be fetched in ranges (830002 otherwise), so every
  download asks for ranges of at most :data:`RANGE_BYTES`, and never for more than the limit plus one
  byte: a larger file is refused without reading it.
* Uploads (``media/upload`` for the app, ``webhook/upload_media`` for the robot) take the multipart field
  ``media`` and answer a ``media_id`` (valid three days). What WeCom would refuse is refused before
  uploading (:func:`plan`): an image that is not a JPG/PNG or is above its type's limit goes as a file,
  which takes anything up to 20 MB.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from imrelay.delivery.http import call, json_or_none
from imrelay.errors import TokenExpiredError, TransientUpstreamError
from imrelay.media import MediaError, MediaKind, MediaProblem
from imrelay.media.fetch import Downloader, Fetched

from .codes import WeComCode
from .delivery import TOKEN_CODES, check

__all__ = [
    "APP_NATIVE",
    "FILE_LIMIT",
    "RANGE_BYTES",
    "ROBOT_NATIVE",
    "Native",
    "download_error",
    "media_get",
    "plan",
    "upload",
    "upload_answer",
]

MB = 1024 * 1024
FILE_LIMIT = 20 * MB  # a file message, on both
FILE_MIN = 5  # the robot's upload refuses files under 5 bytes
RANGE_BYTES = 20 * MB  # media/get answers at most this much without a Range header


@dataclass(frozen=True, slots=True)
class Native:
    """A message type of its own for a kind: the types and the size it takes."""

    msgtype: str
    types: frozenset[str]
    limit: int


# the app's message/send: image 10 MB JPG/PNG, voice 2 MB AMR, video 10 MB MP4 (and file 20 MB)
APP_NATIVE: Mapping[MediaKind, Native] = {
    MediaKind.IMAGE: Native("image", frozenset({"image/jpeg", "image/png"}), 10 * MB),
    MediaKind.VOICE: Native("voice", frozenset({"audio/amr"}), 2 * MB),
    MediaKind.VIDEO: Native("video", frozenset({"video/mp4"}), 10 * MB),
}
# the robot's webhook: an image inline (base64 + md5) up to 2 MB JPG/PNG, voice uploaded up to 2 MB AMR
ROBOT_NATIVE: Mapping[MediaKind, Native] = {
    MediaKind.IMAGE: Native("image", frozenset({"image/jpeg", "image/png"}), 2 * MB),
    MediaKind.VOICE: Native("voice", frozenset({"audio/amr"}), 2 * MB),
}

UNSUPPORTED_CODES = {WeComCode.INVALID_MEDIA_TYPE, WeComCode.INVALID_FILE_TYPE, WeComCode.EMPTY_MEDIA}
OVERSIZE_CODES = {
    WeComCode.INVALID_FILE_SIZE,
    WeComCode.INVALID_IMAGE_SIZE,
    WeComCode.INVALID_VOICE_SIZE,
    WeComCode.INVALID_VIDEO_SIZE,
}


def plan(native: Mapping[MediaKind, Native], kind: MediaKind, mime: str, size: int) -> str:
    """The message type a piece of media goes as: its own where WeCom takes its type and size, else a
    file. :class:`MediaError` ``oversize`` above the file limit, ``unsupported`` when empty."""
    if size < FILE_MIN:
        raise MediaError(MediaProblem.UNSUPPORTED, f"{size} bytes")
    own = native.get(kind)
    if own is not None and mime in own.types and size <= own.limit:
        return own.msgtype
    if size > FILE_LIMIT:
        raise MediaError(MediaProblem.OVERSIZE, f"{size} bytes, limit {FILE_LIMIT}")
    return "file"


def _error_payload(fetched: Fetched) -> dict[str, Any] | None:
    """WeCom's JSON error answer, when that is what came instead of the file."""
    ctype = (fetched.content_type or "").lower()
    if fetched.status < 300 and "json" not in ctype and "text/plain" not in ctype:
        return None
    if not fetched.data[:1] == b"{":
        return None
    try:
        payload = fetched.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) and "errcode" in payload else None


def download_error(fetched: Fetched) -> None:
    """Raise what a ``media/get`` answer that is not the file means: :class:`TokenExpiredError` for a
    token WeCom no longer takes (renewed and asked again), :class:`MediaError` ``download_failed`` with
    WeCom's errcode otherwise (never the token)."""
    payload = _error_payload(fetched)
    if payload is not None:
        code = payload.get("errcode")
        if code == 0:
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, "no file in the answer")
        if code in TOKEN_CODES:
            raise TokenExpiredError("wecom", str(code), "token")
        raise MediaError(MediaProblem.DOWNLOAD_FAILED, str(code))
    if fetched.status not in (200, 206):
        raise MediaError(MediaProblem.DOWNLOAD_FAILED, f"HTTP {fetched.status}")


async def media_get(download: Downloader, url: str, params: Mapping[str, str]) -> Fetched:
    """``GET url?params`` in ranges of at most :data:`RANGE_BYTES`, up to ``download.limit`` bytes: a file
    larger than the limit is refused (``oversize``) after at most the limit plus one byte."""
    limit = download.limit
    body = bytearray()
    first: Fetched | None = None
    while True:
        start = len(body)
        end = min(start + RANGE_BYTES, limit + 1) - 1
        got = await download.api("GET", url, params=dict(params), headers={"Range": f"bytes={start}-{end}"})
        if got.status == 416 and first is not None:  # the file ended exactly at the last range
            break
        download_error(got)
        if got.status == 200:  # the whole file (a server that does not do ranges), capped by download
            if first is None:
                return got
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, "range ignored")
        first = first or got
        body += got.data
        if len(body) > limit:
            raise MediaError(MediaProblem.OVERSIZE, f"more than {limit} bytes")
        if len(got.data) < end - start + 1:  # a short range: the end of the file
            break
    assert first is not None
    return Fetched(bytes(body), 200, first.content_type, first.filename)


def upload_answer(payload: Any, status: int, platform: str, rate_limit_backoff: float) -> str:
    """The ``media_id`` of an upload's answer; :class:`MediaError` for a type or size WeCom refused, the
    upstream error tree for the rest."""
    if isinstance(payload, dict):
        code = payload.get("errcode")
        if code in UNSUPPORTED_CODES:
            raise MediaError(MediaProblem.UNSUPPORTED, str(code))
        if code in OVERSIZE_CODES:
            raise MediaError(MediaProblem.OVERSIZE, str(code))
    check(payload, status, rate_limit_backoff, platform)
    media_id = payload.get("media_id") if isinstance(payload, dict) else None
    if not isinstance(media_id, str) or not media_id:
        raise TransientUpstreamError(platform, "bad_response", "upload answer without media_id")
    return media_id


async def upload(
    client: httpx.AsyncClient,
    url: str,
    params: Mapping[str, str],
    *,
    name: str,
    data: bytes,
    mime: str,
    platform: str,
    bot: str,
    http_timeout: float,
    rate_limit_backoff: float,
) -> str:
    """Upload ``data`` as the multipart field ``media``; its ``media_id``."""
    resp = await call(
        client,
        "POST",
        url,
        platform=platform,
        bot=bot,
        http_timeout=http_timeout,
        params=dict(params),
        files={"media": (name, data, mime)},
    )
    return upload_answer(json_or_none(resp), resp.status_code, platform, rate_limit_backoff)


def file_name(name: str, mime: str) -> str:
    """A name WeCom shows for a file (its type's extension when it has none)."""
    from imrelay.media.sniff import extension

    clean = (name or "").strip().replace("/", "_").replace("\\", "_")[:120]
    if not clean:
        return f"file{extension(mime)}"
    return clean if "." in clean else clean + extension(mime)
