"""No secret leaves the process: the whole stack runs with a distinctive marker in every credential, logs
at DEBUG, exports its spans (all request and response headers captured) to an OTLP/HTTP receiver in this
test, and is driven through conversations on five platforms, an access-token refresh (every WeCom token
expired at once), a DingTalk answer through the robot API (access token in a header), a Discord
interaction (token in the URL path), forged callbacks, and a backend that rejects the API key quoting it
(``Incorrect API key provided: sk-...``). Then no configured secret, no token the platforms issued, no
session webhook and no interaction token shows in any span, any log line (any level), ``/metrics`` or
any error response, and no message text shows in a log line at INFO or above."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imrelay.config import parse_settings
from imrelay.natsserver import EmbeddedNats
from imrelay.platforms.dingtalk import sim as sim_dingtalk
from imrelay.platforms.dingtalk.config import DingTalkBot
from imrelay.platforms.discord.sim import public_key_for
from imrelay_sim.client import build_request

from ..helpers import free_port
from .stack import Stack
from .test_end_to_end import send

pytestmark = pytest.mark.nats

MARK = f"MRK{secrets.token_hex(5)}"  # in every credential
TEXT = f"TXT{secrets.token_hex(5)}"  # in every user message
SEED = secrets.token_hex(32)
API_KEY = f"sk-{MARK}-openai0123456789"
ERROR_MESSAGE = "Sorry, no answer this time."


def credential(name: str) -> str:
    return f"{MARK}-{name}"


def aes_key(name: str) -> str:
    return (f"{MARK}{name}" + "k" * 43)[:43]


class Receiver:
    """An OTLP/HTTP trace receiver: keeps every export request, raw and decoded."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.spans: list[Any] = []
        self.port = free_port()

        async def traces(request: Request) -> Response:
            body = await request.body()
            self.raw.append(body)
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)
            return Response(b"", media_type="application/x-protobuf")

        app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def configure(s: Stack) -> None:
    sim = s.sim_url
    s.config["backends"] = {
        "default": {
            "kind": "openai",
            "base_url": f"{sim}/v1",
            "model": "sim",
            "api_key": API_KEY,
            "error_message": ERROR_MESSAGE,
        }
    }
    s.config["bots"] = [
        {
            "id": "app",
            "platform": "wecom_app",
            "api_base": sim,
            "credentials": {
                "corp_id": "wwsecrets01",
                "agent_id": "1000002",
                "secret": credential("corpsecret"),
                "token": credential("wecomtoken"),
                "encoding_aes_key": aes_key("app"),
            },
        },
        {
            "id": "robot",
            "platform": "wecom_group_robot",
            "api_base": sim,
            "credentials": {"token": credential("robottoken"), "encoding_aes_key": aes_key("robot")},
        },
        {
            "id": "fs",
            "platform": "feishu",
            "api_base": sim,
            "credentials": {
                "app_id": "cli_secrets01",
                "app_secret": credential("feishusecret"),
                "encrypt_key": credential("encryptkey"),
                "verification_token": credential("verification"),
            },
        },
        {
            "id": "dt",
            "platform": "dingtalk",
            "api_base": sim,
            "credentials": {"app_key": "dingsecrets01", "app_secret": credential("dingsecret")},
        },
        {
            "id": "qqbot",
            "platform": "qq",
            "api_base": sim,
            "auth_base": sim,
            "credentials": {"app_id": "1020399", "app_secret": credential("qqsecret")},
        },
        {
            "id": "dc",
            "platform": "discord",
            "api_base": sim,
            "credentials": {
                "application_id": "998866",
                "public_key": public_key_for(SEED),
                "bot_token": credential("discordbot"),
            },
        },
    ]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def stack(
    nats_server: EmbeddedNats, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("secrets")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "IMRELAY_LOG_LEVEL": "DEBUG",
        "DISCORD_SIM_SEED": SEED,
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST": ".*",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE": ".*",
    }
    s = Stack.create(root, nats_server, extra_env=env)
    configure(s)
    with s.running():
        yield s


def post(stack: Stack, bot_id: str, text: str, user: str, msg_id: str) -> tuple[httpx.Response, bytes]:
    bot = parse_settings(stack.config, {}).bot(bot_id)
    assert bot is not None
    query, headers, body = build_request(bot, text, user, msg_id, time.time(), stack.sim_url)
    resp = httpx.post(
        f"{stack.ingress_url}/callback/{bot_id}" + (f"?{query}" if query else ""),
        content=body,
        headers=headers,
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return resp, body


def answered(stack: Stack, bot_id: str, text: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = stack.wait_for(
        lambda: [
            m
            for m in stack.messages(bot=bot_id)
            if text in str(m["content"]) and not m.get("streaming") and not str(m["content"]).endswith("▌")
        ],
        what=f"the answer to {text!r} on {bot_id}",
        timeout=20,
    )
    return found


def record_levels(log: str) -> Iterator[tuple[str, str]]:
    """(level, record text) of every record in a service log; traceback lines belong to their record."""
    start = re.compile(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:\x1b\[\d+m)?"  # FastStream colours levels
        r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b"
    )
    level, lines = "INFO", list[str]()  # output before the first record (e.g. a crash) counts as INFO
    for line in log.splitlines():
        m = start.match(line)
        if m:
            if lines:
                yield level, "\n".join(lines)
            level, lines = m.group(1), [line]
        else:
            lines.append(line)
    if lines:
        yield level, "\n".join(lines)


def test_no_secret_in_spans_logs_metrics_or_error_responses(
    stack: Stack, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISCORD_SIM_SEED", SEED)  # the simulator signs this test's Discord interactions
    obtained: list[str] = []  # tokens handed out per message: session webhooks, interaction tokens

    # WeCom app, twice around an expiry of every access token: the sender refreshes its token
    send(stack, f"{TEXT} wecom one", "alice")
    answered(stack, "app", f"{TEXT} wecom one")
    issued_before = stack.sim_stats().get("tokens_issued", 0)
    stack.control(expire_tokens=True)
    send(stack, f"{TEXT} wecom two", "alice")
    answered(stack, "app", f"{TEXT} wecom two")
    assert stack.sim_stats()["tokens_issued"] > issued_before, "the token was not refreshed"

    # the group robot (its webhook URL carries the robot's key), Feishu (tenant token), QQ (app token)
    send(stack, f"{TEXT} robot", "bob", bot_id="robot", chat="wrkgroup1")
    for bot_id in ("fs", "qqbot"):
        post(stack, bot_id, f"{TEXT} {bot_id}", "carol", str(secrets.randbelow(2**40)))
    for bot_id in ("robot", "fs", "qqbot"):
        answered(stack, bot_id, f"{TEXT} {bot_id}")

    # DingTalk: once through the session webhook, once through the robot API with an access token
    _, body = post(stack, "dt", f"{TEXT} dt session", "dave", str(secrets.randbelow(2**40)))
    session_url = json.loads(body)["sessionWebhook"]
    obtained.append(parse_qs(urlsplit(session_url).query)["session"][0])
    answered(stack, "dt", f"{TEXT} dt session")
    bot = parse_settings(stack.config, {}).bot("dt")
    assert isinstance(bot, DingTalkBot)
    headers, body = sim_dingtalk.callback(
        bot,
        f"{TEXT} dt robot api",
        "erin",
        "cid_erin",
        False,
        f"msg{secrets.token_hex(6)}",
        time.time(),
        stack.sim_url,
        session_minutes=0,
    )
    obtained.append(parse_qs(urlsplit(json.loads(body)["sessionWebhook"]).query)["session"][0])
    assert (
        httpx.post(f"{stack.ingress_url}/callback/dt", content=body, headers=headers, timeout=10).status_code
        == 200
    )
    answered(stack, "dt", f"{TEXT} dt robot api")

    # Discord: the interaction token is in the path of every reply
    _, body = post(stack, "dc", f"{TEXT} discord", "frank", str(secrets.randbelow(2**40)))
    obtained.append(json.loads(body)["token"])
    answered(stack, "dc", f"{TEXT} discord")

    # a backend that rejects the key and quotes it: the user gets the error message
    httpx.post(f"{stack.sim_url}/sim/llm", json={"reject_key_next": 1}, timeout=5).raise_for_status()
    send(stack, f"{TEXT} rejected", "grace")
    stack.wait_for(
        lambda: [m for m in stack.messages(bot="app", touser="grace") if ERROR_MESSAGE in str(m["content"])],
        what="the error answer",
    )

    # forged and malformed callbacks: their error responses
    errors: list[str] = []
    for bot_id in ("app", "robot", "fs", "dt", "qqbot", "dc", "nobody"):
        for body_bytes in (b"{}", b"<xml><Encrypt>AAAA</Encrypt></xml>", b"\xff" * 10):
            r = httpx.post(
                f"{stack.ingress_url}/callback/{bot_id}?msg_signature=x&timestamp=1&nonce=n",
                content=body_bytes,
                headers={"timestamp": "1", "sign": "x"},
                timeout=10,
            )
            assert r.status_code < 500
            errors.append(f"{r.status_code} {dict(r.headers)} {r.text}")
    forged = httpx.post(
        f"{stack.ingress_url}/callback/app%0A2026-01-01 00:00:00,000 INFO forged line%1B[2K",
        content=b"x",
        timeout=10,
    )
    errors.append(forged.text)

    metrics = "\n".join(
        httpx.get(f"{stack.admin_url(name)}/metrics", timeout=5).text
        for name in ("ingress", "worker", "sender")
    )
    issued = httpx.get(f"{stack.sim_url}/sim/tokens", timeout=5).json()
    assert len(issued) >= 5  # WeCom twice, Feishu, QQ, DingTalk

    stack.stop()  # flushes the last spans and ends the logs
    logs = {
        name: (stack.root / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        for name in ("ingress", "worker", "sender")
    }
    settings = parse_settings(stack.config, {})
    configured = [
        v.get_secret_value()
        for b in settings.bots
        for v in b.credentials.__dict__.values()
        if isinstance(v, SecretStr)
    ]
    configured += [b.api_key.get_secret_value() for b in settings.backends.values() if b.api_key]
    assert len(configured) == 12 and all(MARK in v for v in configured)
    secrets_ = [*configured, *issued, *obtained]

    span_text = "\n".join(str(s) for s in receiver.spans)
    raw_spans = b"".join(receiver.raw)
    places = {
        "spans": span_text,
        "metrics": metrics,
        "error responses": "\n".join(errors),
        **{f"{name} log": text for name, text in logs.items()},
    }
    for secret in secrets_:
        for where, text in places.items():
            assert secret not in text, f"a secret ({secret[:6]}...) in the {where}"
        assert secret.encode() not in raw_spans
    assert MARK not in span_text and MARK not in metrics and MARK.encode() not in raw_spans
    for name, text in logs.items():
        assert MARK not in text, f"the marker in the {name} log"

    # no message text at INFO or above
    for name, text in logs.items():
        for level, record in record_levels(text):
            if level != "DEBUG":
                assert TEXT not in record, f"message text at {level} in the {name} log: {record[:300]}"
    # nothing forged a line of its own
    assert not any(line.startswith("2026-01-01") for text in logs.values() for line in text.splitlines())

    # the leaks were there to be stopped: redacted URLs and headers, the quoted key in the worker's log
    assert "Incorrect API key provided: [REDACTED]" in logs["worker"]
    http_spans = [s for s in receiver.spans if s.kind == 3]  # CLIENT
    urls = [a.value.string_value for s in http_spans for a in s.attributes if a.key == "url.full"]
    assert any("corpsecret=[REDACTED]" in u for u in urls), urls
    assert any("access_token=[REDACTED]" in u for u in urls)
    assert any("session=[REDACTED]" in u for u in urls)
    assert any(re.search(r"/webhooks/998866/\[REDACTED\]", u) for u in urls)
    assert not any(a.key == "http.url" for s in http_spans for a in s.attributes)  # stable conventions
    headers_seen = {
        a.key for s in http_spans for a in s.attributes if a.key.startswith("http.request.header.")
    }
    assert "http.request.header.authorization" in headers_seen
    assert "http.request.header.x_acs_dingtalk_access_token" in headers_seen
