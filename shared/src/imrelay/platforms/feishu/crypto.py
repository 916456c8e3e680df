"""Feishu / Lark event crypto, as pure functions.

* Body encryption (only when an Encrypt Key is set): ``key = SHA-256(encrypt_key)``; the base64 ``encrypt``
  field is ``IV (16 bytes) || AES-256-CBC(plaintext)`` with strict PKCS#7 (block 16).
* Signature: lowercase hex ``SHA-256(timestamp + nonce + encrypt_key + raw_body)``, from the
  ``X-Lark-Request-Timestamp`` / ``X-Lark-Request-Nonce`` / ``X-Lark-Signature`` headers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from Crypto.Cipher import AES
from Crypto.Util.Padding import pad, unpad

from ...errors import DecryptError, VerifyError

__all__ = ["decrypt", "encrypt", "signature", "verify_signature"]


def _key(encrypt_key: str) -> bytes:
    return hashlib.sha256(encrypt_key.encode("utf-8")).digest()


def decrypt(encrypt_key: str, ciphertext: str) -> bytes:
    try:
        data = base64.b64decode(ciphertext.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise DecryptError("encrypt is not valid base64") from exc
    if len(data) < 32 or len(data) % 16:
        raise DecryptError("encrypt has the wrong length")
    plain = AES.new(_key(encrypt_key), AES.MODE_CBC, iv=data[:16]).decrypt(data[16:])
    try:
        return unpad(plain, 16, style="pkcs7")
    except ValueError as exc:
        raise DecryptError("invalid padding") from exc


def encrypt(encrypt_key: str, plaintext: bytes, iv: bytes | None = None) -> str:
    """The inverse of :func:`decrypt` (used by the simulator)."""
    iv = os.urandom(16) if iv is None else iv
    body = AES.new(_key(encrypt_key), AES.MODE_CBC, iv=iv).encrypt(pad(plaintext, 16, style="pkcs7"))
    return base64.b64encode(iv + body).decode("ascii")


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    h = hashlib.sha256()
    h.update((timestamp + nonce + encrypt_key).encode("utf-8"))
    h.update(body)
    return h.hexdigest()


def verify_signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes, received: str) -> None:
    expected = signature(timestamp, nonce, encrypt_key, body)
    if not hmac.compare_digest(expected.encode("ascii"), received.lower().encode("utf-8")):
        raise VerifyError("signature mismatch")
