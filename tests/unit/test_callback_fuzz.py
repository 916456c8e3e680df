"""A seeded fuzz of every platform's callback endpoint, in-process (the ASGI app with a fake store).

Two kinds of hostile input, ``CASES`` of each per bot, from ``random.Random(SEED)``:

* **outsider** (no keys): bit flips in body, signature, ciphertext and timestamp; truncated and extended
  bodies; headers and query parameters dropped or garbled; timestamps re-signed by the platform inside and
  outside the replay window; invalid UTF-8; XXE and billion-laughs XML; oversize bodies; odd paths and
  methods. Asserted: never a 5xx, nothing stored for a refused request, and no message stored but the
  original one (a forged or altered message is never accepted).
* **insider** (payloads signed and encrypted with the bot's keys, as a compromised or buggy platform could
  send): values of the wrong JSON type anywhere in the payload, deep nesting, invalid UTF-8 and lone
  surrogates, random bytes, XXE inside the ciphertext. Asserted: never a 5xx, and every refusal is a
  deliberate one (no "unexpected" parser failure logged).

Change ``SEED`` to explore; a failure prints the case (kind, mutation, request) to reproduce it.
"""

from __future__ import annotations

import base64
import json
import logging
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest

from imrelay.events import InboundMessage

from ..hostile import BOT_IDS, Ingress, Request, bot, plaintext_of, sign_plaintext, signed

SEED = 20261202
CASES = 250  # of each kind, per bot: 8 bots x 2 kinds x 250 = 4,000 requests
NOW = 1_767_263_060.0
LIMIT = 1024 * 1024  # the ingress's default max_body_bytes

XXE = (
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    b"<xml><Encrypt>&e;</Encrypt><Content>&e;</Content></xml>"
)
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;">]>'
    b"<xml><Encrypt>&d;</Encrypt></xml>"
)


def flip(data: bytes, rng: random.Random, bits: int = 1) -> bytes:
    if not data:
        return b"\x00"
    out = bytearray(data)
    for _ in range(bits):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def garble(text: str, rng: random.Random) -> str:
    """Change one character of a header or query value (printable ASCII, as HTTP allows)."""
    if not text:
        return rng.choice(["0", "-1", "x" * 300, "１２３"])
    i = rng.randrange(len(text))
    return text[:i] + rng.choice("0123456789abcdefABCDEF+/=-_ ") + text[i + 1 :]


def signature_location(req: Request) -> tuple[str, str]:
    """Where a request's signature and its timestamp live: ('query'|'header', name) pairs."""
    if req.query:
        return "query", "msg_signature"
    for name in ("X-Lark-Signature", "X-Signature-Ed25519", "sign"):
        if name in req.headers:
            return "header", name
    raise AssertionError(req)


def timestamp_name(req: Request) -> tuple[str, str]:
    if req.query:
        return "query", "timestamp"
    for name in ("X-Lark-Request-Timestamp", "X-Signature-Timestamp", "timestamp"):
        if name in req.headers:
            return "header", name
    raise AssertionError(req)


def with_value(req: Request, where: tuple[str, str], value: str | None) -> Request:
    kind, name = where
    if kind == "query":
        q = [(k, v) for k, v in parse_qsl(req.query, keep_blank_values=True) if k != name]
        if value is not None:
            q.append((name, value))
        return req.replace(query=urlencode(q))
    headers = {k: v for k, v in req.headers.items() if k != name}
    if value is not None:
        headers[name] = value
    return req.replace(headers=headers)


def value_of(req: Request, where: tuple[str, str]) -> str:
    kind, name = where
    source = dict(parse_qsl(req.query)) if kind == "query" else req.headers
    return source[name]


def ciphertext_flip(req: Request, rng: random.Random) -> Request:
    """Flip bits inside the base64 ciphertext of an encrypted body (keeping it valid base64)."""
    body = req.body
    if body.startswith(b"{"):
        data = json.loads(body)
        if "encrypt" not in data:
            return req.replace(body=flip(body, rng))
        raw = flip(base64.b64decode(data["encrypt"]), rng)
        return req.replace(body=json.dumps({**data, "encrypt": base64.b64encode(raw).decode()}).encode())
    start, end = body.find(b"<![CDATA[", body.find(b"<Encrypt>")) + 9, body.find(b"]]></Encrypt>")
    raw = flip(base64.b64decode(body[start:end]), rng)
    return req.replace(body=body[:start] + base64.b64encode(raw) + body[end:])


def outsider(req: Request, rng: random.Random) -> tuple[str, Request]:
    """One mutation of a valid request by someone without the bot's keys."""
    kind = rng.choice(
        [
            "body",
            "body",
            "ciphertext",
            "signature",
            "drop",
            "timestamp",
            "resign",
            "truncate",
            "extend",
            "garbage",
            "xml",
            "oversize",
            "path",
            "method",
            "header",
        ]
    )
    if kind == "body":
        return kind, req.replace(body=flip(req.body, rng, rng.randint(1, 4)))
    if kind == "ciphertext":
        return kind, ciphertext_flip(req, rng)
    if kind == "signature":
        where = signature_location(req)
        return kind, with_value(req, where, garble(value_of(req, where), rng))
    if kind == "drop":
        return kind, with_value(req, rng.choice([signature_location(req), timestamp_name(req)]), None)
    if kind == "timestamp":
        where = timestamp_name(req)
        ts = value_of(req, where)
        return kind, with_value(req, where, str(int(ts) + rng.choice([-3600, -1, 1, 60, 10**6])))
    if kind == "resign":  # the platform itself re-sending the same message at another time
        return kind, signed(req.bot_id, "hello", "1", NOW + rng.randint(-900, 900))
    if kind == "truncate":
        return kind, req.replace(body=req.body[: rng.randrange(len(req.body))])
    if kind == "extend":
        return kind, req.replace(body=req.body + rng.choice([b" ", b"\x00", b"}", b"<x/>", b"\xff" * 9]))
    if kind == "garbage":
        return kind, req.replace(body=rng.randbytes(rng.randint(0, 300)))
    if kind == "xml":
        return kind, req.replace(body=rng.choice([XXE, LAUGHS]))
    if kind == "oversize":
        return kind, req.replace(body=b"{" + b" " * LIMIT + b"}")
    if kind == "path":
        return kind, req.replace(
            bot_id=rng.choice(
                ["", "nobody", req.bot_id + "x", "..%2f..%2fetc", "%00", "a" * 300, req.bot_id + "/extra"]
            )
        )
    if kind == "method":
        return kind, req.replace(method=rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    headers = dict(req.headers)
    headers[rng.choice(["Content-Type", "Content-Length", "X-Bot-Appid", "Transfer-Encoding"])] = rng.choice(
        ["", "x", "-1", "999999999", "chunked", "application/json; charset=nope"]
    )
    return kind, req.replace(headers=headers)


# ---- insider: well-signed payloads of every wrong shape ---------------------------------------------------

WRONG: list[Callable[[random.Random], Any]] = [
    lambda r: None,
    lambda r: True,
    lambda r: r.randint(-(2**70), 2**70),
    lambda r: r.random() * 1e308,
    lambda r: [],
    lambda r: {},
    lambda r: [1, "2", None],
    lambda r: {"a": {"b": []}},
    lambda r: "x" * r.randint(0, 2000),
    lambda r: "\ud800",
    lambda r: "\u0000\u202e",
    lambda r: "1e999",
]


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


def replace_at(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node[path[0]] = replace_at(node[path[0]], path[1:], value)
    return node


def deep_json(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def deep_xml(depth: int) -> bytes:
    return b"<xml>" + b"<a>" * depth + b"x" + b"</a>" * depth + b"</xml>"


def insider(plain: bytes, rng: random.Random, is_xml: bool) -> tuple[str, bytes]:
    kind = rng.choice(["type", "type", "type", "deep", "utf8", "surrogate", "bytes", "flip", "xxe"])
    if kind == "type" and not is_xml:
        doc = json.loads(plain)
        for _ in range(rng.randint(1, 3)):
            where = rng.choice(paths(doc))
            doc = replace_at(doc, where, rng.choice(WRONG)(rng))
        return kind, json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    if kind == "type":  # XML: a field emptied, nested, repeated or given odd text
        tags = [t.split(b">")[0] for t in plain.split(b"<")[1:] if t and t[:1] not in (b"/", b"!")]
        tag = rng.choice(tags) if tags else b"MsgType"
        odd = rng.choice([b"", b"<x><y>z</y></x>", b"&amp;&lt;", b"\xe4\xbd\xa0" * 500, b"<![CDATA[]]>"])
        return kind, plain.replace(b"<" + tag + b">", b"<" + tag + b">" + odd, 1)
    if kind == "deep":
        depth = rng.choice([33, 100, 1000, 100_000])
        return kind, deep_xml(depth) if is_xml else deep_json(depth)
    if kind == "utf8":
        i = rng.randrange(len(plain))
        return kind, plain[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]) + plain[i:]
    if kind == "surrogate" and not is_xml:
        return kind, plain.replace(b'"', b'"\\udc80', 2)
    if kind == "xxe" and is_xml:
        return kind, rng.choice([XXE, LAUGHS])
    if kind == "flip":
        return kind, flip(plain, rng, rng.randint(1, 8))
    return "bytes", rng.randbytes(rng.randint(0, 200))


def describe(kind: str, mutation: str, req: Request) -> str:
    return (
        f"{kind}/{mutation} {req.method} /callback/{req.bot_id}?{req.query[:120]} "
        f"headers={req.headers} body={req.body[:200]!r}"
    )


@pytest.mark.parametrize("bot_id", BOT_IDS)
async def test_outsiders_cannot_get_a_5xx_or_a_forged_message_in(bot_id: str) -> None:
    rng = random.Random(f"{SEED}:outsider:{bot_id}")
    ingress = Ingress(now=NOW)
    original = signed(bot_id, "hello", "1", NOW)
    assert (await ingress.send(original)).status_code == 200
    [stored] = ingress.publisher.published
    refused = 0
    for _ in range(CASES):
        mutation, req = outsider(original, rng)
        before = len(ingress.publisher.published)
        resp = await ingress.send(req)
        case = describe("outsider", mutation, req)
        assert resp.status_code < 500, case
        if resp.status_code >= 400:
            refused += 1
            assert len(ingress.publisher.published) == before, case
        # whatever was answered 2xx, nothing but the original message was ever stored
        assert ingress.publisher.published == [stored], case
    assert refused > CASES // 2  # the mutations do reach the checks


@pytest.mark.parametrize("bot_id", BOT_IDS)
async def test_signed_payloads_of_any_shape_never_crash_a_parser(
    bot_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(f"{SEED}:insider:{bot_id}")
    ingress = Ingress(now=NOW)
    plain = plaintext_of(signed(bot_id, "hello", "1", NOW))
    is_xml = bot(bot_id).platform in ("wecom_app", "wecom_group_robot")
    statuses: dict[int, int] = {}
    with caplog.at_level(logging.ERROR, logger="imrelay.ingress"):
        for _ in range(CASES):
            mutation, payload = insider(plain, rng, is_xml)
            req = sign_plaintext(bot_id, payload, NOW)
            before = len(ingress.publisher.published)
            resp = await ingress.send(req)
            case = describe("insider", mutation, req)
            assert resp.status_code < 500, case
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            if resp.status_code >= 400:
                assert len(ingress.publisher.published) == before, case
            unexpected = [r.getMessage() for r in caplog.records if "unexpected" in r.getMessage()]
            assert not unexpected, (case, unexpected)
    assert statuses.get(400, 0) > 0
    for msg in ingress.publisher.published:  # whatever was stored can be carried on NATS
        assert InboundMessage.model_validate_json(msg.model_dump_json()) == msg
