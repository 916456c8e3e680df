from __future__ import annotations

import base64

import pytest

from imrelay.errors import DecryptError, VerifyError
from imrelay.platforms.wecom.codes import WeComCode
from imrelay.platforms.wecom.crypto import BLOCK, WeComCrypto, block_pad, block_unpad, signature

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def test_round_trip_with_unicode_and_receive_id() -> None:
    c = WeComCrypto("tok", KEY, "wwcorp")
    msg = "你好 <xml> & ]]> ünïcode".encode()
    enc = c.encrypt(msg)
    sig = c.sign("1700000000", "42", enc)
    assert c.verify_and_decrypt(sig, "1700000000", "42", enc) == msg


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 64])
def test_pad_is_pkcs7_with_32_byte_blocks(n: int) -> None:
    padded = block_pad(b"x" * n)
    assert len(padded) % BLOCK == 0
    assert 1 <= padded[-1] <= BLOCK
    assert block_unpad(padded) == b"x" * n


@pytest.mark.parametrize("bad", [b"", b"abc\x00", b"a" * 31 + b"\x21", b"a" * 28 + b"\x01\x02\x03\x04"])
def test_unpad_rejects_anything_but_strict_padding(bad: bytes) -> None:
    with pytest.raises(DecryptError) as err:
        block_unpad(bad)
    assert err.value.code == WeComCode.ILLEGAL_BUFFER


def test_wrong_signature_and_wrong_receive_id_are_verify_errors() -> None:
    c = WeComCrypto("tok", KEY, "wwcorp")
    enc = c.encrypt(b"hi")
    with pytest.raises(VerifyError) as err:
        c.verify_and_decrypt("0" * 40, "1", "2", enc)
    assert err.value.code == WeComCode.VALIDATE_SIGNATURE
    other = WeComCrypto("tok", KEY, "")
    with pytest.raises(VerifyError) as err:
        other.decrypt(enc)
    assert err.value.code == WeComCode.VALIDATE_RECEIVE_ID


def test_signature_is_sorted_sha1() -> None:
    import hashlib

    expected = hashlib.sha1(b"".join(sorted([b"t", b"1", b"n", b"data"]))).hexdigest()  # noqa: S324
    assert signature("t", "1", "n", "data") == expected


def test_bad_key_is_refused_and_repr_hides_secrets() -> None:
    with pytest.raises(DecryptError) as err:
        WeComCrypto("tok", "short", "")
    assert err.value.code == WeComCode.ILLEGAL_AES_KEY
    c = WeComCrypto("supersecrettoken", KEY, "ww1")
    assert "supersecret" not in repr(c) and KEY not in repr(c)


def test_ciphertext_of_wrong_length_is_a_decrypt_error() -> None:
    c = WeComCrypto("tok", KEY, "")
    bad = base64.b64encode(b"x" * 17).decode()
    with pytest.raises(DecryptError) as err:
        c.decrypt(bad)
    assert err.value.code == WeComCode.DECRYPT_AES
