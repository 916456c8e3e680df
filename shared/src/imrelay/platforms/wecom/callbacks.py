"""WeCom XML callbacks (self-built app and group robot): envelope, URL verification, safe XML parsing.

Pure functions over bytes/str; the crypto itself lives in :mod:`imrelay.platforms.wecom.crypto`.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.parsers import expat

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden

from imrelay.callbacks import check_timestamp
from imrelay.errors import DecryptError, ParseError, VerifyError
from imrelay.platforms.wecom.crypto import WeComCrypto

from .codes import WeComCode

__all__ = ["decrypt_post", "parse_xml", "query_params", "verify_url", "verify_signed"]

# WeCom's documents are two or three levels deep; deeper ones are refused rather than walked.
MAX_XML_DEPTH = 8


def _forbid_dtd(name: str, sysid: str | None, pubid: str | None, has_internal_subset: bool) -> None:
    raise DTDForbidden(name, sysid, pubid)


def _forbid_entity(
    name: str,
    is_parameter_entity: bool,
    value: str | None,
    base: str | None,
    sysid: str | None,
    pubid: str | None,
    notation_name: str | None,
) -> None:
    raise EntitiesForbidden(name, value, base, sysid, pubid, notation_name)


def _forbid_unparsed_entity(
    name: str, base: str | None, sysid: str | None, pubid: str | None, notation_name: str | None
) -> None:
    raise EntitiesForbidden(name, None, base, sysid, pubid, notation_name)


def _forbid_external(context: str, base: str | None, sysid: str | None, pubid: str | None) -> int:
    raise ExternalReferenceForbidden(context, base, sysid, pubid)


def _tag(name: str) -> str:
    """ElementTree's spelling of a namespaced name: ``{uri}local``."""
    return "{" + name if "}" in name else name


class _FlatBuilder:
    """Expat handlers that build the dotted-path dict directly, without an element tree: a leaf's text
    under its path (the first occurrence wins), an element's text before its first child otherwise
    ignored, as :func:`parse_xml` documents. The n-th repeat of an element among its siblings (n >= 1)
    is keyed ``Name[n]`` (``MixedMessage.MsgItem[1].MsgType``)."""

    __slots__ = ("has_child", "out", "path", "seen", "text")

    def __init__(self) -> None:
        self.out: dict[str, str] = {}
        self.path: list[str] = []  # dotted keys of the open elements below the root
        self.has_child: list[bool] = []  # per open element (root included)
        self.seen: list[dict[str, int]] = []  # per open element: how often each child name came
        self.text: list[str] | None = None  # text of the innermost open element, until it gets a child

    def start(self, name: str, attrs: object) -> None:
        depth = len(self.has_child)
        if depth > MAX_XML_DEPTH:
            raise ParseError(f"XML nested deeper than {MAX_XML_DEPTH} levels", WeComCode.PARSE_XML)
        if depth:
            self.has_child[-1] = True
            parent = self.path[-1] + "." if self.path else ""
            tag = _tag(name)
            seen = self.seen[-1]
            n = seen.get(tag, 0)
            seen[tag] = n + 1
            self.path.append(parent + (f"{tag}[{n}]" if n else tag))
            self.text = []
        self.has_child.append(False)
        self.seen.append({})

    def end(self, name: str) -> None:
        had_child = self.has_child.pop()
        self.seen.pop()
        if not self.has_child:
            return
        key = self.path.pop()
        if not had_child and key not in self.out:
            self.out[key] = "".join(self.text or ())
        self.text = None

    def data(self, text: str) -> None:
        if self.text is not None and not self.has_child[-1]:
            self.text.append(text)


def parse_xml(data: bytes | str) -> dict[str, str]:
    """Parse a flat-ish WeCom XML document into ``{"A": "..", "From.UserId": ".."}`` (dotted paths;
    a repeated element's later occurrences as ``Name[1]``, ``Name[2]``...).

    DTDs and entities are refused (the handlers defusedxml installs: no DTD, no entity declaration, no
    external reference), so no external entities and no entity expansion bombs. One expat parser (C) per
    document, feeding the dict directly.
    """
    builder = _FlatBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    parser.StartDoctypeDeclHandler = _forbid_dtd
    parser.EntityDeclHandler = _forbid_entity
    parser.UnparsedEntityDeclHandler = _forbid_unparsed_entity
    parser.ExternalEntityRefHandler = _forbid_external
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except ParseError:
        raise
    except (expat.ExpatError, DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden, ValueError) as exc:
        raise ParseError("malformed XML", WeComCode.PARSE_XML) from exc
    return builder.out


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
