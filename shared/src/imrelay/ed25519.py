"""Ed25519 signatures over pycryptodome (RFC 8032 "pure" Ed25519), for the platforms that sign callbacks
with it.

Verification rejects malformed signatures before verifying: 64 bytes, hex, and the top three bits of the
last byte clear (a non-canonical S).
"""

from __future__ import annotations

import binascii

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from .errors import VerifyError

__all__ = ["public_key_hex", "sign", "signing_key", "verify"]


def signing_key(seed: bytes) -> ECC.EccKey:
    return ECC.construct(curve="Ed25519", seed=seed)


def public_key_hex(key: ECC.EccKey) -> str:
    return bytes(key.public_key().export_key(format="raw")).hex()


def sign(key: ECC.EccKey, message: bytes) -> str:
    return bytes(eddsa.new(key, "rfc8032").sign(message)).hex()


def verify(public_key: bytes | ECC.EccKey, message: bytes, signature_hex: str | None) -> None:
    if not signature_hex:
        raise VerifyError("missing signature")
    try:
        sig = binascii.unhexlify(signature_hex)
    except (binascii.Error, ValueError) as exc:
        raise VerifyError("signature is not hex") from exc
    if len(sig) != 64 or sig[63] & 0xE0:
        raise VerifyError("malformed signature")
    try:
        key = public_key if isinstance(public_key, ECC.EccKey) else eddsa.import_public_key(bytes(public_key))
    except ValueError as exc:
        raise VerifyError("configured public key is not an Ed25519 key") from exc
    try:
        eddsa.new(key, "rfc8032").verify(message, sig)
    except ValueError as exc:
        raise VerifyError("signature mismatch") from exc
