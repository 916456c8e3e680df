"""The ingress app in-process with a fake publisher: status codes for every kind of bad input."""

from __future__ import annotations

import random
import time

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext
from prometheus_client import REGISTRY

from imrelay.config import Settings, parse_settings
from imrelay.events import InboundMessage
from imrelay.platforms.wecom.crypto import WeComCrypto
from imrelay.platforms.wecom.sim import app_text_xml, encrypted_post, url_verification
from imrelay.platforms.wecom_app.handle import WeComAppHandle
from imrelay_ingress import app as ingress_app
from imrelay_ingress.app import create_app

from ..helpers import FakePublisher

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
CORP, AGENT = "wwtest", "1000002"
CRYPTO = WeComCrypto("tok", KEY, CORP)


def settings(**ingress: object) -> Settings:
    return parse_settings(
        {
            "ingress": ingress,
            "bots": [
                {
                    "id": "app",
                    "platform": "wecom_app",
                    "credentials": {
                        "corp_id": CORP,
                        "agent_id": AGENT,
                        "secret": "s",
                        "token": "tok",
                        "encoding_aes_key": KEY,
                    },
                }
            ],
        },
        {},
    )


def callback(text: str = "hello", msg_id: str = "42", agent: str = AGENT) -> tuple[str, bytes]:
    now = int(time.time())
    cb = encrypted_post(
        CRYPTO, app_text_xml(CORP, agent, "alice", text, msg_id, now), now, to_user=CORP, agent_id=agent
    )
    return cb.query, cb.body


def count(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "imrelay_callbacks_total", {"platform": "wecom_app", "bot": "app", "outcome": outcome}
        )
        or 0
    )


async def post(
    pub: FakePublisher, query: str, body: bytes, s: Settings | None = None, path: str = "/callback/app"
) -> httpx.Response:
    app = create_app(s or settings(), pub)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://i") as c:
        return await c.post(f"{path}?{query}", content=body)


async def test_valid_message_is_stored_then_acked_with_empty_body() -> None:
    pub = FakePublisher()
    q, b = callback("what is NATS?")
    resp = await post(pub, q, b)
    assert resp.status_code == 200 and resp.content == b""
    [msg] = pub.published
    assert msg.text == "what is NATS?" and msg.sender.id == "alice"
    assert msg.reply_handle == WeComAppHandle(touser="alice", agentid=AGENT)


class ContextPublisher(FakePublisher):
    """Also records the trace context current when each message is stored (what goes into its headers)."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[SpanContext] = []

    async def publish(self, message: InboundMessage) -> bool:
        self.contexts.append(trace.get_current_span().get_span_context())
        return await super().publish(message)


@pytest.mark.parametrize("exported", [True, False])
async def test_the_callback_span_is_opened_only_when_traces_are_exported(
    exported: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(ingress_app, "tracer", provider.get_tracer("test"))
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    if exported:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    pub = ContextPublisher()
    q, b = callback("trace me?")
    assert (await post(pub, q, b)).status_code == 200
    [stored] = pub.contexts
    if exported:
        [span] = spans.get_finished_spans()
        assert span.name == "imrelay.callback" and span.attributes is not None
        assert span.attributes["imrelay.outcome"] == "accepted"
        assert stored.is_valid and stored.span_id == span.context.span_id
    else:
        assert spans.get_finished_spans() == () and not stored.is_valid


async def test_retry_of_the_same_message_is_acked_but_not_stored_twice() -> None:
    pub = FakePublisher()
    q, b = callback(msg_id="777")
    before = count("duplicate")
    assert (await post(pub, q, b)).status_code == 200
    assert (await post(pub, q, b)).status_code == 200
    assert len(pub.published) == 1
    assert count("duplicate") == before + 1


async def test_nats_down_answers_503_so_the_platform_retries() -> None:
    pub = FakePublisher()
    pub.fail = True
    q, b = callback()
    resp = await post(pub, q, b)
    assert resp.status_code == 503 and pub.published == []


async def test_oversized_body_is_413() -> None:
    pub = FakePublisher()
    q, _ = callback()
    resp = await post(pub, q, b"<xml>" + b"a" * 5000 + b"</xml>", settings(max_body_bytes=4096))
    assert resp.status_code == 413 and pub.published == []


async def test_unknown_bot_is_404() -> None:
    pub = FakePublisher()
    q, b = callback()
    assert (await post(pub, q, b, path="/callback/nobody")).status_code == 404


async def test_bad_signature_401_and_counted() -> None:
    pub = FakePublisher()
    q, b = callback()
    before = count("rejected_signature")
    q = q.replace("msg_signature=", "msg_signature=0")
    assert (await post(pub, q, b)).status_code == 401
    assert count("rejected_signature") == before + 1 and pub.published == []


async def test_missing_query_params_401() -> None:
    pub = FakePublisher()
    _, b = callback()
    assert (await post(pub, "timestamp=1", b)).status_code == 401


async def test_other_agent_id_is_refused() -> None:
    pub = FakePublisher()
    q, b = callback(agent="1000099")
    assert (await post(pub, q, b)).status_code == 401 and pub.published == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b"<xml><Encrypt></Encrypt></xml>",
        b"<xml><ToUserName>x</ToUserName></xml>",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml>&e;</xml>',
        b'<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><xml><Encrypt>&b;</Encrypt></xml>',
        "<xml>\u4f60</xml>".encode("utf-16"),
    ],
)
async def test_malformed_bodies_are_4xx(body: bytes) -> None:
    pub = FakePublisher()
    q, _ = callback()
    resp = await post(pub, q, body)
    assert 400 <= resp.status_code < 500 and pub.published == []


async def test_signed_garbage_is_400_not_500() -> None:
    """A sender who knows the token signs random ciphertexts: never a 500."""
    pub = FakePublisher()
    rng = random.Random(7)
    import base64

    ts = str(int(time.time()))

    for _ in range(50):
        raw = bytes(rng.randrange(256) for _ in range(rng.choice([16, 32, 48, 64])))
        enc = base64.b64encode(raw).decode()
        sig = CRYPTO.sign(ts, "2", enc)
        body = f"<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>".encode()
        resp = await post(pub, f"msg_signature={sig}&timestamp={ts}&nonce=2", body)
        assert resp.status_code in (400, 401)
    # a correctly encrypted but non-XML plaintext
    enc = CRYPTO.encrypt(b"\xff\xfe not xml")
    sig = CRYPTO.sign(ts, "2", enc)
    resp = await post(
        pub,
        f"msg_signature={sig}&timestamp={ts}&nonce=2",
        f"<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>".encode(),
    )
    assert resp.status_code == 400 and pub.published == []


async def test_url_verification_echoes_plaintext_exactly() -> None:
    app = create_app(settings(), FakePublisher())
    q = url_verification(CRYPTO, "1234567890123456789", int(time.time()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://i") as c:
        resp = await c.get(f"/callback/app?{q}")
        assert resp.status_code == 200 and resp.text == "1234567890123456789"
        assert resp.headers["content-type"].startswith("text/plain")
        assert (await c.put(f"/callback/app?{q}")).status_code == 405
        assert (await c.get("/metrics")).status_code == 404  # metrics live on the admin port
