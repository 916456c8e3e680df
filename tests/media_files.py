"""Real media bytes for tests: a valid PNG of any size (its type is read from the bytes), a PDF."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib


def png(width: int = 4, height: int = 4, *, noise: int = 0) -> bytes:
    """A valid PNG; ``noise`` random bytes appended in a private chunk make it as large as wanted."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(
        b"\x00" + bytes([x * 40 % 256, y * 60 % 256, 128] * width) for y in range(height) for x in [y]
    )
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    out += chunk(b"IDAT", zlib.compress(raw))
    if noise:
        out += chunk(b"prVt", os.urandom(noise))
    return out + chunk(b"IEND", b"")


def pdf(text: str = "imrelay test document") -> bytes:
    body = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    return (
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n"
        b"3 0 obj << /Type /Page /Parent 2 0 R /Contents 4 0 R >> endobj\n"
        + f"4 0 obj << /Length {len(body)} >> stream\n".encode()
        + body
        + b"\nendstream endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    )


def sha(data: bytes) -> str:
    """The sha256 of ``data`` as the simulator's models and platforms report it (hex)."""
    return hashlib.sha256(data).hexdigest()
