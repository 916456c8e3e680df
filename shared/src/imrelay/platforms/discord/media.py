"""Discord media, the pure parts: what a message's attachments become, and what an upload is.

* Inbound: a slash command's ATTACHMENT options (type 11) name attachments resolved in
  ``data.resolved.attachments[id]``; a Gateway ``MESSAGE_CREATE`` lists ``attachments[]``. Each carries
  ``filename``, ``size``, ``content_type`` and a signed, expiring CDN ``url`` (fetched through the SSRF
  guard, without the bot token: the URL's signature is its only credential). A voice message is an
  ``audio/ogg`` attachment with ``duration_secs`` and a ``waveform`` (message flag 8192).
* Outbound: a multipart body, ``payload_json`` (with ``attachments: [{id: n, filename}]``) and
  ``files[n]``, on an interaction's follow-up or a channel message. Discord decides whether to show a file
  as an image from its name's extension, so an image's name ends with its type's.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterable, Mapping
from typing import Any

from ...events import Attachment
from ...media import MediaError, MediaKind, MediaProblem, MediaRef

MB = 1024 * 1024
UPLOAD_LIMIT = 20 * MB  # per file, unless the interaction says otherwise (``attachment_size_limit``)
MAX_FILES = 10  # attachments per message
OUTBOUND = frozenset({MediaKind.IMAGE, MediaKind.FILE, MediaKind.VIDEO})
# what Discord shows as an image (others go as files to download)
SHOWN_IMAGES: dict[str, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
}
ATTACHMENT_OPTION = 11
VOICE_MESSAGE_FLAG = 1 << 13
TOO_LARGE = 40005  # "Request entity too large" (HTTP 413)


def kind_of(attachment: Mapping[str, Any], message_flags: int = 0) -> MediaKind:
    """The kind of an attachment, from its declared type (a hint: the worker reads the bytes)."""
    mime = str(attachment.get("content_type") or "").split(";", 1)[0].strip().lower()
    if mime.startswith("image/"):
        return MediaKind.IMAGE
    if mime.startswith("video/"):
        return MediaKind.VIDEO
    if mime.startswith("audio/") and (
        message_flags & VOICE_MESSAGE_FLAG or attachment.get("waveform") or attachment.get("duration_secs")
    ):
        return MediaKind.VOICE
    return MediaKind.FILE


def attachment(raw: Mapping[str, Any], message_flags: int = 0) -> Attachment | None:
    """One Discord attachment object as an :class:`Attachment` (None without a URL)."""
    url = raw.get("url") or raw.get("proxy_url")
    if not isinstance(url, str) or not url:
        return None
    size = raw.get("size")
    mime = raw.get("content_type")
    return Attachment(
        kind=kind_of(raw, message_flags).value,
        ref=url,
        url=url,
        name=str(raw.get("filename") or "")[:200],
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        mime=mime[:100] if isinstance(mime, str) and mime else None,
    )


def from_message(message: Mapping[str, Any]) -> list[Attachment]:
    """The attachments of a Gateway ``MESSAGE_CREATE``."""
    flags = message.get("flags")
    raws = message.get("attachments")
    if not isinstance(raws, list):
        return []
    found = (attachment(a, flags if isinstance(flags, int) else 0) for a in raws if isinstance(a, Mapping))
    return [a for a in found if a is not None]


def from_command(data: Mapping[str, Any] | None) -> list[Attachment]:
    """The attachments a slash command's ATTACHMENT options name, in the options' order."""
    if not isinstance(data, Mapping):
        return []
    resolved = data.get("resolved")
    resolved = resolved.get("attachments") if isinstance(resolved, Mapping) else None
    if not isinstance(resolved, Mapping):
        resolved = {}
    options = data.get("options")
    out: list[Attachment] = []
    for option in _options(options if isinstance(options, list) else []):
        if option.get("type") != ATTACHMENT_OPTION:
            continue
        raw = resolved.get(str(option.get("value", "")))
        if isinstance(raw, Mapping) and (found := attachment(raw)) is not None:
            out.append(found)
    return out


def _options(options: Iterable[Any]) -> Iterable[Mapping[str, Any]]:
    """Options, those of subcommands (and groups) included."""
    for option in options:
        if not isinstance(option, Mapping):
            continue
        yield option
        if isinstance(option.get("options"), list):
            yield from _options(option["options"])


# ---- uploads ----------------------------------------------------------------------------------------


def upload_check(ref: MediaRef, size: int, limit: int = UPLOAD_LIMIT) -> None:
    """Raise :class:`MediaError` for what Discord would not take or not show: a kind it does not send,
    an image in a type it does not show, a file above the limit (``attachment_size_limit``)."""
    if ref.kind not in OUTBOUND:
        raise MediaError(MediaProblem.UNSUPPORTED, f"no upload of {ref.kind.value}")
    if ref.kind is MediaKind.IMAGE and ref.mime not in SHOWN_IMAGES:
        raise MediaError(MediaProblem.UNSUPPORTED, ref.mime)
    if size > limit:
        raise MediaError(MediaProblem.OVERSIZE, f"{size} bytes, limit {limit}")


def filename(ref: MediaRef) -> str:
    """The uploaded file's name: the media's own, its extension made to match its type (Discord shows a
    file as an image by its extension)."""
    name = ref.name.replace("/", "_").replace("\\", "_").strip()[:100] or ref.kind.value
    ext = SHOWN_IMAGES.get(ref.mime) or mimetypes.guess_extension(ref.mime) or ""
    if ext and not name.lower().endswith(ext) and not (ext == ".jpg" and name.lower().endswith(".jpeg")):
        name = f"{name.rsplit('.', 1)[0] if '.' in name else name}{ext}"
    return name


def multipart(
    payload: dict[str, Any], ref: MediaRef, data: bytes
) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
    """(form fields, files) of a message carrying one file: ``payload_json`` names it as attachment 0."""
    name = filename(ref)
    body = {**payload, "attachments": [{"id": 0, "filename": name}]}
    return {"payload_json": json.dumps(body, ensure_ascii=False)}, {"files[0]": (name, data, ref.mime)}
