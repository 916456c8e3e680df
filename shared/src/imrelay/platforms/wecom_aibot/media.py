"""A WeCom AI bot's media, the pure parts: decrypting the files messages point to, the images of a
callback-mode answer (``msg_item``), and the long connection's chunked upload.

A message's image, file or video is a URL to an encrypted file: AES-256-CBC with the message's ``aeskey``
(base64) or, without one, the bot's EncodingAESKey; the IV is the key's first 16 bytes; PKCS#7 padding to
32-byte blocks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math

from ...media import MediaError, MediaKind, MediaProblem, MediaSupport

__all__ = [
    "CHUNK_BYTES",
    "IMAGE_LIMIT",
    "INLINE_IMAGES",
    "MAX_CHUNKS",
    "SUPPORT",
    "chunks",
    "decrypt_file",
    "file_key",
    "inline_image",
]

CHUNK_BYTES = 512 * 1024  # the long connection's upload: raw bytes per chunk
MAX_CHUNKS = 100
IMAGE_LIMIT = 10 * 1024 * 1024  # an answer's image (JPG or PNG)
UPLOAD_LIMIT = CHUNK_BYTES * MAX_CHUNKS
INLINE_IMAGES = 10  # images one final stream update may carry (``msg_item``)
IMAGE_TYPES = frozenset({"image/png", "image/jpeg"})

SUPPORT = MediaSupport(
    inbound=frozenset({MediaKind.IMAGE, MediaKind.FILE, MediaKind.VOICE, MediaKind.VIDEO}),
    outbound=frozenset({MediaKind.IMAGE}),
    limits={MediaKind.IMAGE: IMAGE_LIMIT},  # WeCom documents no download limit: media.max_bytes applies
    note="files arrive encrypted (decrypted here); voice arrives transcribed; answers' images as JPG/PNG",
)


def file_key(aeskey: str | None, encoding_aes_key: str) -> bytes:
    """The 32-byte key of a message's file: its own ``aeskey``, else the bot's EncodingAESKey."""
    value = aeskey or encoding_aes_key
    try:
        key = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(MediaProblem.DOWNLOAD_FAILED, "the file's key is not base64") from exc
    if len(key) != 32:
        raise MediaError(MediaProblem.DOWNLOAD_FAILED, "the file's key is not 32 bytes")
    return key


def decrypt_file(data: bytes, key: bytes) -> bytes:
    """The plain bytes of a downloaded file (AES-256-CBC, IV = key[:16], PKCS#7 padding up to 32)."""
    if not data or len(data) % 16:
        raise MediaError(MediaProblem.DOWNLOAD_FAILED, "not an encrypted file (length)")
    from Crypto.Cipher import AES

    plain = AES.new(key, AES.MODE_CBC, iv=key[:16]).decrypt(data)
    pad = plain[-1]
    if not 1 <= pad <= 32 or pad > len(plain) or plain[-pad:] != bytes([pad]) * pad:
        raise MediaError(MediaProblem.DOWNLOAD_FAILED, "not an encrypted file (padding)")
    return plain[:-pad]


def encrypt_file(data: bytes, key: bytes) -> bytes:
    """The inverse of :func:`decrypt_file` (the simulator serves files this way)."""
    from Crypto.Cipher import AES

    pad = 32 - len(data) % 32
    return AES.new(key, AES.MODE_CBC, iv=key[:16]).encrypt(data + bytes([pad]) * pad)


def check_image(mime: str, size: int, limit: int = IMAGE_LIMIT) -> None:
    """Refuse what WeCom would not show as an answer's image."""
    if mime not in IMAGE_TYPES:
        raise MediaError(MediaProblem.UNSUPPORTED, f"{mime} is not JPG or PNG")
    if size > limit:
        raise MediaError(MediaProblem.OVERSIZE, f"{size} bytes, limit {limit}")


def inline_image(data: bytes) -> dict[str, object]:
    """One ``msg_item`` of a callback-mode final stream update."""
    return {
        "msgtype": "image",
        "image": {
            "base64": base64.b64encode(data).decode("ascii"),
            "md5": hashlib.md5(data).hexdigest(),  # noqa: S324 - WeCom's checksum
        },
    }


def chunks(data: bytes) -> list[bytes]:
    """The long connection's upload chunks (≤ 512 KB raw each, ≤ 100): too many is ``oversize``."""
    count = max(1, math.ceil(len(data) / CHUNK_BYTES))
    if count > MAX_CHUNKS:
        raise MediaError(
            MediaProblem.OVERSIZE, f"{len(data)} bytes need {count} chunks, {MAX_CHUNKS} at most"
        )
    return [data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES] for i in range(count)]
