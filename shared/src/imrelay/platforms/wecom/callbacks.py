"""WeCom XML callbacks (self-built app and group robot): envelope, URL verification, safe XML parsing.

Pure functions over bytes/str; the crypto itself lives in :mod:`imrelay.platforms.wecom.crypto`.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.etree.ElementTree import Element
from xml.etree.ElementTree import ParseError as XmlParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from imrelay.callbacks import check_timestamp
from imrelay.errors import DecryptError, ParseError, VerifyError
from imrelay.platforms.wecom.crypto import WeComCrypto

from .codes import WeComCode

__all__ = ["decrypt_post", "parse_xml", "query_params", "verify_url", "verify_signed"]

# WeCom's documents are two or three levels deep; deeper ones are refused rather than walked.
MAX_XML_DEPTH = 8


def parse_xml(data: bytes | str) -> dict[str, str]:
    """Parse a flat-ish WeCom XML document into ``{"A": "..", "From.UserId": ".."}`` (dotted paths).

    DTDs and entities are refused (defusedxml): no external entities, no entity expansion bombs.
    """
    try:
        root: Element = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (XmlParseError, DefusedXmlException, ValueError) as exc:
        raise ParseError("malformed XML", WeComCode.PARSE_XML) from exc
    out: dict[str, str] = {}

    def walk(el: Element, prefix: str, depth: int) -> None:
        if depth > MAX_XML_DEPTH:
            raise ParseError(f"XML nested deeper than {MAX_XML_DEPTH} levels", WeComCode.PARSE_XML)
        for child in el:
            key = f"{prefix}{child.tag}"
            if len(child):
                walk(child, key + ".", depth + 1)
            elif key not in out:
                out[key] = child.text or ""

    walk(root, "", 1)
    return out


def query_params(query: Mapping[str, str], *names: str) -> list[str]:
    values = []
    for name in names:
        v = query.get(name)
        if not v:
            raise VerifyError(f"missing query parameter {name}")
        values.append(v)
    return values


def verify_signed(crypto: WeComCrypto, query: Mapping[str, str], data: str, now: float, window: float) -> str:
    """Check ``msg_signature`` over ``data`` and the signed ``timestamp`` against the replay window;
    return the timestamp."""
    sig, ts, nonce = query_params(query, "msg_signature", "timestamp", "nonce")
    crypto.verify(sig, ts, nonce, data)
    check_timestamp(ts, now, window)
    return ts


def verify_url(crypto: WeComCrypto, query: Mapping[str, str], now: float, window: float) -> bytes:
    """GET URL verification: check the signature over ``echostr`` and return its plaintext."""
    [echostr] = query_params(query, "echostr")
    verify_signed(crypto, query, echostr, now, window)
    return crypto.decrypt(echostr)


def decrypt_post(
    crypto: WeComCrypto, query: Mapping[str, str], body: bytes, now: float, window: float
) -> dict[str, str]:
    """POST callback: read ``<Encrypt>`` from the envelope, verify, decrypt, parse the inner XML."""
    query_params(query, "msg_signature", "timestamp", "nonce")
    envelope = parse_xml(body)
    encrypted = envelope.get("Encrypt")
    if not encrypted:
        raise ParseError("envelope has no Encrypt element", WeComCode.PARSE_XML)
    verify_signed(crypto, query, encrypted, now, window)
    plaintext = crypto.decrypt(encrypted)
    try:
        plaintext.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecryptError("plaintext is not UTF-8", WeComCode.ILLEGAL_BUFFER) from exc
    return parse_xml(plaintext)
