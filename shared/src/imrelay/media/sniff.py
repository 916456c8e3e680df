"""The type of a piece of media, read from its bytes (a platform's or a server's ``Content-Type`` is not
trusted: it decides what a backend is told it reads)."""

from __future__ import annotations

import mimetypes

import puremagic

from . import MediaKind

__all__ = ["OCTET", "extension", "kind_of", "sniff"]

OCTET = "application/octet-stream"

# signatures puremagic does not name with a MIME type (voice formats the platforms use)
_EXTRA: tuple[tuple[bytes, int, str], ...] = (
    (b"#!AMR-WB\n", 0, "audio/amr-wb"),
    (b"#!AMR\n", 0, "audio/amr"),
    (b"#!SILK_V3", 0, "audio/silk"),
    (b"\x02#!SILK_V3", 0, "audio/silk"),
    (b"OggS", 0, "audio/ogg"),
    (b"ID3", 0, "audio/mpeg"),
    (b"fLaC", 0, "audio/flac"),
)

# the types a model is shown as images (what OpenAI-compatible vision models take)
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def sniff(data: bytes) -> str:
    """The MIME type the bytes are, ``application/octet-stream`` when unknown; plain UTF-8 text is
    ``text/plain``."""
    for magic, offset, mime in _EXTRA:
        if data[offset : offset + len(magic)] == magic:
            return mime
    head = data[: 1 << 16]
    try:
        mime = puremagic.from_string(head, mime=True)
    except (puremagic.PureError, ValueError):
        mime = ""
    if mime:
        return str(mime)
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:  # a cut in the middle of a character at the end is still text
            if exc.start < len(head) - 4:
                return OCTET
        return "text/plain"
    return OCTET


def kind_of(mime: str, declared: MediaKind | str | None = None) -> MediaKind:
    """The media kind bytes of this type are sent as: an image only when they are one."""
    if mime in IMAGE_TYPES:
        return MediaKind.IMAGE
    if mime.startswith("audio/"):
        return MediaKind.VOICE
    if mime.startswith("video/"):
        return MediaKind.VIDEO
    if declared in (MediaKind.VOICE, MediaKind.VIDEO) and mime == OCTET:
        return MediaKind(declared)
    return MediaKind.FILE


def extension(mime: str) -> str:
    """A file name extension for the type (``.png``), ``.bin`` when there is none."""
    special = {"image/jpeg": ".jpg", "audio/amr": ".amr", "audio/silk": ".silk", "text/plain": ".txt"}
    return special.get(mime) or mimetypes.guess_extension(mime) or ".bin"
