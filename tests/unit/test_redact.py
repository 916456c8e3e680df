"""Secrets out of logs and traces (:mod:`imrelay.redact`): the masking rules, the logging filter (whatever
logger writes, also exception text), escaping of untrusted text, the span scrub and the httpx hook."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from nats.js.errors import KeyNotFoundError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from imrelay import redact
from imrelay.delivery.tokens import TokenCache
from imrelay.events import Chat, ChatType, InboundMessage, ReplyChunk, Sender
from imrelay.redact import MASK, MASKER, Masker, RedactingSpanExporter, protect_settings

from .test_secret_reprs import MARK, marker_settings

API_KEY = "sk-MARKERproj0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_masker() -> Iterator[None]:
    MASKER.clear()
    yield
    MASKER.clear()


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Logging as the services set it up (``setup_logging``), into a buffer; restored afterwards."""
    from imrelay.telemetry import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogRecordFactory()
    root.handlers = []
    setup_logging("test")
    out = io.StringIO()
    for handler in root.handlers:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(out)
    try:
        yield out
    finally:
        root.handlers, level, factory = saved
        root.setLevel(level)
        logging.setLogRecordFactory(factory)
        redact._installed = False


# ---- the masking rules -------------------------------------------------------------------------------


def test_long_secrets_are_masked_anywhere_short_ones_only_as_whole_words() -> None:
    m = Masker()
    for value in ("longsecret", "abc", "ab"):
        m.add(value)
    assert m.mask("x=longsecret y=prefixlongsecretsuffix") == f"x={MASK} y=prefix{MASK}suffix"
    assert m.mask("abc abcd xabc abc.") == f"{MASK} abcd xabc {MASK}."
    assert m.mask("ab a b") == "ab a b"  # one or two characters protect nothing: never masked


def test_url_encoded_forms_and_the_longest_match() -> None:
    m = Masker()
    m.add("tok/en+1==")
    m.add("tok/en+1==extra")
    assert m.mask("a tok%2Fen%2B1%3D%3D b tok/en+1==extra") == f"a {MASK} b {MASK}"


def test_obtained_values_are_bounded_and_kept_while_used() -> None:
    m = Masker(max_ephemeral=3)
    m.add("configured-secret")
    for i in range(3):
        m.add(f"session-{i:04d}", ephemeral=True)
    m.add("session-0000", ephemeral=True)  # used again: kept
    m.add("session-0003", ephemeral=True)  # the oldest unused one goes
    assert "session-0000" in m and "session-0001" not in m and "configured-secret" in m
    m.add("configured-secret", ephemeral=True)
    for i in range(10):
        m.add(f"other-{i:04d}", ephemeral=True)
    assert m.mask("configured-secret") == MASK  # configuration values are never forgotten


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid=ww1&corpsecret=S3cr3tValue", "S3cr3tValue"),
        ("https://qyapi.weixin.qq.com/cgi-bin/message/send?access_token=AccessTok1", "AccessTok1"),
        ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx", "693a91f6-7xxx"),
        ("https://oapi.dingtalk.com/robot/sendBySession?session=c1a2b3d4e5", "c1a2b3d4e5"),
        (
            "https://discord.com/api/v10/webhooks/1234/aW50ZXJhY3Rpb24abc/messages/@original",
            "aW50ZXJhY3Rpb24abc",
        ),
        ("https://discord.com/api/v10/interactions/99/aW50ZXJhY3Rpb24xyz/callback", "aW50ZXJhY3Rpb24xyz"),
    ],
)
def test_credentials_in_urls_are_redacted_by_their_shape(url: str, secret: str) -> None:
    out = redact.redact(url)
    assert secret not in out and MASK in out
    assert out.split("?")[0].split("/")[2] == url.split("?")[0].split("/")[2]  # the host stays


def test_settings_and_reply_handles_register_their_secrets() -> None:
    protect_settings(marker_settings())
    assert redact.redact(f"key {MARK}-openai and {MARK}-dingsecret") == f"key {MASK} and {MASK}"
    chunk = ReplyChunk(
        reply_id="r",
        inbound_id="i",
        platform="discord",
        bot_id="b",
        chat=Chat(id="c", type=ChatType.DIRECT),
        recipient=Sender(id="u"),
        seq=0,
        reply_handle={"application_id": "1", "interaction_token": "aW50ZXJhY3Rpb24tokenvalue"},
    )
    inbound = InboundMessage(
        id="i",
        platform="dingtalk",
        bot_id="b",
        platform_message_id="m",
        chat=Chat(id="c", type=ChatType.DIRECT),
        sender=Sender(id="u"),
        reply_handle={
            "conversation_id": "c",
            "session_webhook": "https://oapi.dingtalk.com/robot/sendBySession?session=SeSsIoN42",
        },
    )
    assert chunk.reply_handle and inbound.reply_handle
    assert MASKER.mask("t=aW50ZXJhY3Rpb24tokenvalue s=SeSsIoN42") == f"t={MASK} s={MASK}"


# ---- logs --------------------------------------------------------------------------------------------


def test_an_echoed_api_key_is_masked_whatever_logger_writes_it(logs: io.StringIO) -> None:
    MASKER.add(API_KEY)
    own = io.StringIO()
    detached = logging.getLogger("test.detached")  # like uvicorn's loggers: own handler, no propagation
    detached.propagate = False
    detached.addHandler(logging.StreamHandler(own))
    try:
        logging.getLogger("imrelay.worker").warning(
            "backend failed: %s", f"401 Incorrect API key provided: {API_KEY}."
        )
        detached.error("key %s in the message itself: " + API_KEY, API_KEY)
        logging.getLogger("x").warning(f"f-string {API_KEY}")
        logging.getLogger("x").warning("%(key)s as a mapping", {"key": API_KEY})
    finally:
        detached.handlers.clear()
        detached.propagate = True
    text = logs.getvalue() + own.getvalue()
    assert API_KEY not in text and "sk-MARKER" not in text
    assert "backend failed: 401 Incorrect API key provided: [REDACTED]." in text
    assert text.count(MASK) == 5


def test_exception_text_and_tracebacks_are_masked_and_stay_multiline(logs: io.StringIO) -> None:
    MASKER.add(API_KEY)
    try:
        raise ValueError(f"upstream said: Incorrect API key provided: {API_KEY}")
    except ValueError:
        logging.getLogger("imrelay.worker").exception("call failed")
    text = logs.getvalue()
    assert API_KEY not in text
    lines = text.splitlines()
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == f"ValueError: upstream said: Incorrect API key provided: {MASK}"


def test_untrusted_values_cannot_forge_log_lines(logs: io.StringIO) -> None:
    path = "/callback/x\n2026-01-01 00:00:00,000 INFO ingress imrelay: forged\r\x1b[2Kgone"
    logging.getLogger("imrelay.ingress").warning("unknown path %s (%r)", path, path)
    text = logs.getvalue()
    assert text.count("\n") == 1 and "\r" not in text and "\x1b" not in text
    assert "/callback/x\\n2026-01-01" in text and "\\x1b[2Kgone" in text


def test_numbers_keep_their_formats(logs: io.StringIO) -> None:
    logging.getLogger("x").warning("%d items in %.1fs, %s", 3, 1.25, None)
    assert logs.getvalue().rstrip().endswith("3 items in 1.2s, None")


def test_a_token_the_sender_obtains_is_masked_from_then_on(logs: io.StringIO) -> None:
    class MemoryKV:
        def __init__(self) -> None:
            self.data: dict[str, bytes] = {}

        async def get(self, key: str) -> Any:
            if key not in self.data:
                raise KeyNotFoundError
            return type("Entry", (), {"value": self.data[key], "revision": 1})()

        async def put(self, key: str, value: bytes) -> int:
            self.data[key] = value
            return 1

        async def create(self, key: str, value: bytes) -> int:
            return await self.put(key, value)

        async def delete(self, key: str, last: int | None = None) -> bool:
            self.data.pop(key, None)
            return True

    issued = "IssuedAccessToken-0123456789"

    async def fetch() -> tuple[str, float]:
        return issued, 7200.0

    kv = MemoryKV()
    assert asyncio.run(TokenCache(kv).get("wecom.ww1.1", fetch)) == issued  # type: ignore[arg-type]
    logging.getLogger("httpx").warning("POST /cgi-bin/message/send?token=%s", issued)
    # another replica (a fresh process) reads the same token from the shared cache
    MASKER.clear()
    from_kv = json.loads(kv.data["wecom.ww1.1"])["token"]
    assert asyncio.run(TokenCache(kv).get("wecom.ww1.1", fetch)) == from_kv  # type: ignore[arg-type]
    logging.getLogger("x").warning("token %s", issued)
    assert issued not in logs.getvalue()


# ---- traces ------------------------------------------------------------------------------------------


def test_http_client_spans_carry_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability

    from imrelay.telemetry import instrument_httpx

    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST",
        "authorization,x-acs-dingtalk-access-token,content-type",
    )
    monkeypatch.setattr(_OpenTelemetrySemanticConventionStability, "_initialized", False)
    MASKER.add(API_KEY)
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedactingSpanExporter(exported)))
    tracer = provider.get_tracer("test")

    async def run() -> None:
        client = httpx.AsyncClient(
            transport=httpx.MockTransport(
                lambda r: httpx.Response(
                    401, json={"error": {"message": f"Incorrect API key provided: {API_KEY}"}}
                )
            )
        )
        from opentelemetry import trace

        monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
        instrument_httpx(client)
        await client.get("https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid=ww1&corpsecret=CorpSecret9")
        await client.post(
            "https://api.dingtalk.com/v1.0/robot/oToMessages/batchSend",
            headers={"x-acs-dingtalk-access-token": "DingTok-123456"},
            json={},
        )
        await client.post(
            "https://api.openai.com/v1/chat/completions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={},
        )
        await client.post("https://discord.com/api/v10/webhooks/1/aW50ZXJhY3Rpb24zzz/messages/@original")
        with tracer.start_as_current_span(f"answer with {API_KEY}") as span:
            span.record_exception(ValueError(f"Incorrect API key provided: {API_KEY}"))
        await client.aclose()

    asyncio.run(run())
    spans = exported.get_finished_spans()
    assert len(spans) == 5
    dump = repr(
        [
            (s.name, dict(s.attributes or {}), [(e.name, dict(e.attributes or {})) for e in s.events])
            for s in spans
        ]
    )
    for secret in ("CorpSecret9", "DingTok-123456", API_KEY, "aW50ZXJhY3Rpb24zzz"):
        assert secret not in dump
    http = [dict(s.attributes or {}) for s in spans if s.name in ("GET", "POST")]
    assert len(http) == 4  # the stable conventions: the span is named after the method
    assert all("url.full" in a and "http.url" not in a for a in http)
    assert http[0]["url.full"] == f"https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid=ww1&corpsecret={MASK}"
    assert http[1]["http.request.header.x_acs_dingtalk_access_token"] == (MASK,)
    assert http[1]["http.request.header.content_type"] == ("application/json",)


def test_credential_fields_in_json_text_are_redacted() -> None:
    text = json.dumps(
        {
            "interaction_token": "aW50ZXJhY3Rpb24abc",
            "max_tokens": 5,
            "api_key": "sk-1",
            "session_webhook": "https://x/robot?session=s1",
            "text": "hello",
        }
    )
    out = redact.redact(text + " " + repr({"app_secret": "plain"}))
    assert all(s not in out for s in ("aW50ZXJhY3Rpb24abc", "sk-1", "session=s1", "plain"))
    assert '"max_tokens": 5' in out and '"text": "hello"' in out
