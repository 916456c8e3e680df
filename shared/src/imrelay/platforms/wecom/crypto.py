"""WeCom callback crypto (the "WXBizMsgCrypt" scheme), as pure functions.

Used by the self-built app (XML, ReceiveId = CorpID), the group robot (XML, ReceiveId "") and the
AI bot (JSON, ReceiveId ""). Layout of the plaintext inside the ciphertext::

    random(16) || msg_len (uint32 big-endian) || msg || receive_id || PKCS#7 pad (block 32)

AES-256-CBC with key = b64decode(EncodingAESKey + "=") and IV = key[:16]. Signatures are the SHA-1 of the
sorted, concatenated ``[token, timestamp, nonce, ciphertext]``. Every failure raises
:class:`~imrelay.errors.VerifyError` or :class:`~imrelay.errors.DecryptError` carrying the reference
implementation's error code; the messages never include key material or plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Protocol

from Crypto.Cipher import AES

from ...errors import DecryptError, VerifyError
from .codes import WeComCode

__all__ = ["WeComCrypto", "block_pad", "block_unpad", "signature"]

BLOCK = 32
_RANDOM_LEN = 16


def signature(token: str, timestamp: str, nonce: str, data: str) -> str:
    """SHA-1 over the lexicographically sorted, concatenated four strings (lower-case hex)."""
    parts = sorted([token, timestamp, nonce, data])
    return hashlib.sha1("".join(parts).encode("utf-8"), usedforsecurity=False).hexdigest()


def block_pad(data: bytes) -> bytes:
    """PKCS#7 with a 32-byte block (a full block of 32 when already aligned)."""
    n = BLOCK - (len(data) % BLOCK)
    return data + bytes([n]) * n


def block_unpad(data: bytes) -> bytes:
    """Strict PKCS#7 (block 32): the last byte p is 1..32 and the last p bytes all equal p."""
    if not data:
        raise DecryptError("empty plaintext", WeComCode.ILLEGAL_BUFFER)
    p = data[-1]
    if p < 1 or p > BLOCK or p > len(data):
        raise DecryptError("invalid padding", WeComCode.ILLEGAL_BUFFER)
    if not hmac.compare_digest(data[-p:], bytes([p]) * p):
        raise DecryptError("invalid padding", WeComCode.ILLEGAL_BUFFER)
    return data[:-p]


def _b64decode_strict(value: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise DecryptError("ciphertext is not valid base64", WeComCode.DECODE_BASE64) from exc


@dataclass(frozen=True, slots=True)
class WeComCrypto:
    """One bot's WeCom crypto parameters. ``receive_id`` is the CorpID for apps, "" for bots."""

    token: str
    encoding_aes_key: str
    receive_id: str

    def __post_init__(self) -> None:
        # Validate the key eagerly so a bad config fails at start, not at the first callback.
        self.key  # noqa: B018

    def __repr__(self) -> str:
        return f"WeComCrypto(token=***, encoding_aes_key=***, receive_id={self.receive_id!r})"

    @property
    def key(self) -> bytes:
        try:
            key = base64.b64decode((self.encoding_aes_key + "=").encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise DecryptError("EncodingAESKey is not base64", WeComCode.ILLEGAL_AES_KEY) from exc
        if len(self.encoding_aes_key) != 43 or len(key) != 32:
            raise DecryptError("EncodingAESKey must be 43 characters", WeComCode.ILLEGAL_AES_KEY)
        return key

    def verify(self, msg_signature: str, timestamp: str, nonce: str, data: str) -> None:
        """Check ``msg_signature`` over ``data`` in constant time; raise VerifyError on mismatch."""
        expected = signature(self.token, timestamp, nonce, data)
        if not hmac.compare_digest(expected.encode("ascii"), msg_signature.lower().encode("utf-8")):
            raise VerifyError("signature mismatch", WeComCode.VALIDATE_SIGNATURE)

    def decrypt(self, ciphertext: str) -> bytes:
        """Decrypt a base64 ciphertext into the message bytes, checking padding, length, receive id."""
        raw = _b64decode_strict(ciphertext)
        if not raw or len(raw) % AES.block_size:
            raise DecryptError("ciphertext length is not a multiple of 16", WeComCode.DECRYPT_AES)
        key = self.key
        plain = AES.new(key, AES.MODE_CBC, iv=key[:16]).decrypt(raw)
        body = block_unpad(plain)
        if len(body) < _RANDOM_LEN + 4:
            raise DecryptError("plaintext too short", WeComCode.ILLEGAL_BUFFER)
        (msg_len,) = struct.unpack(">I", body[_RANDOM_LEN : _RANDOM_LEN + 4])
        start = _RANDOM_LEN + 4
        if start + msg_len > len(body):
            raise DecryptError("message length exceeds plaintext", WeComCode.ILLEGAL_BUFFER)
        msg = body[start : start + msg_len]
        receive_id = body[start + msg_len :]
        if not hmac.compare_digest(receive_id, self.receive_id.encode("utf-8")):
            raise VerifyError("receive id mismatch", WeComCode.VALIDATE_RECEIVE_ID)
        return msg

    def verify_and_decrypt(self, msg_signature: str, timestamp: str, nonce: str, ciphertext: str) -> bytes:
        self.verify(msg_signature, timestamp, nonce, ciphertext)
        return self.decrypt(ciphertext)

    def encrypt(self, message: bytes, random16: bytes | None = None) -> str:
        """Encrypt ``message`` for a passive reply (or for the simulator); returns base64 text."""
        rnd = os.urandom(_RANDOM_LEN) if random16 is None else random16
        if len(rnd) != _RANDOM_LEN:
            raise ValueError("random16 must be 16 bytes")
        body = rnd + struct.pack(">I", len(message)) + message + self.receive_id.encode("utf-8")
        key = self.key
        raw = AES.new(key, AES.MODE_CBC, iv=key[:16]).encrypt(block_pad(body))
        return base64.b64encode(raw).decode("ascii")

    def sign(self, timestamp: str, nonce: str, ciphertext: str) -> str:
        return signature(self.token, timestamp, nonce, ciphertext)

    def encrypted_xml_reply(
        self, message: str, timestamp: str, nonce: str, random16: bytes | None = None
    ) -> str:
        """The XML envelope of an encrypted passive reply."""
        enc = self.encrypt(message.encode("utf-8"), random16)
        sig = self.sign(timestamp, nonce, enc)
        return (
            f"<xml><Encrypt><![CDATA[{enc}]]></Encrypt>"
            f"<MsgSignature><![CDATA[{sig}]]></MsgSignature>"
            f"<TimeStamp>{timestamp}</TimeStamp>"
            f"<Nonce><![CDATA[{nonce}]]></Nonce></xml>"
        )


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


class WeComCallbackCredentials(Protocol):
    @property
    def token(self) -> _Secret: ...
    @property
    def encoding_aes_key(self) -> _Secret: ...


def crypto_for(credentials: WeComCallbackCredentials) -> WeComCrypto:
    """The crypto of a WeCom bot's callbacks: an app's receive id is its corp id; a group robot's and an
    AI bot's is empty."""
    return WeComCrypto(
        credentials.token.get_secret_value(),
        credentials.encoding_aes_key.get_secret_value(),
        str(getattr(credentials, "corp_id", "")),
    )
