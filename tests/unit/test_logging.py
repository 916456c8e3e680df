"""``IMRELAY_LOG_FORMAT=json`` lines carry the trace; a NATS outage is logged with its URLs at a falling
rate."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider

from imrelay.natslog import OutageLog, should_log
from imrelay.telemetry import JsonFormatter, inject_headers, tracer_provider


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("imrelay.sender", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_json_lines_carry_the_active_trace() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("deliver") as span:
        line = JsonFormatter("sender").format(record("delivered %d part(s) for %s", 2, "bot-a"))
    entry = json.loads(line)
    ctx = span.get_span_context()
    assert entry["trace_id"] == format(ctx.trace_id, "032x") and len(entry["trace_id"]) == 32
    assert entry["span_id"] == format(ctx.span_id, "016x") and len(entry["span_id"]) == 16
    assert entry["message"] == "delivered 2 part(s) for bot-a"
    assert entry["level"] == "WARNING"
    assert entry["service"] == "imrelay-sender"
    assert entry["logger"] == "imrelay.sender"
    assert entry["time"].endswith("+00:00")


def test_without_an_exporter_spans_are_not_recorded_but_keep_their_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    tracer = tracer_provider("imrelay-test").get_tracer("test")
    with tracer.start_as_current_span("imrelay.callback") as span:
        assert not span.is_recording()
        line = JsonFormatter("ingress").format(record("stored"))
        headers: dict[str, str] = {}
        inject_headers(headers)
    ctx = span.get_span_context()
    assert ctx.is_valid and not ctx.trace_flags.sampled
    assert json.loads(line)["trace_id"] == format(ctx.trace_id, "032x")
    _, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (trace_id, span_id) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert not int(flags, 16) & 1  # not sampled


def test_json_lines_without_a_trace_and_with_an_exception() -> None:
    entry = json.loads(JsonFormatter("worker").format(record("failed: 你好", exc=True)))
    assert "trace_id" not in entry and "span_id" not in entry
    assert entry["message"] == "failed: 你好"
    assert "ValueError: boom" in entry["exception"]


def test_failed_attempts_are_logged_at_a_falling_rate() -> None:
    assert [n for n in range(1, 300) if should_log(n, every=120)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        120,
        128,
        240,
        256,
    ]


async def test_an_outage_names_the_servers_and_is_logged_sparsely(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    outage = OutageLog(
        logging.getLogger("imrelay.test"),
        ["nats://imrelay:pw@nats-1:4222", "nats://nats-2:4222"],
        clock=lambda: now[0],
    )
    caplog.set_level(logging.INFO, "imrelay.test")
    await outage.disconnected_cb()
    for _ in range(100):  # 50 s of attempts every half second
        now[0] += 0.5
        await outage.error_cb(ConnectionRefusedError())
    await outage.reconnected_cb()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "disconnected from NATS at nats://imrelay:***@nats-1:4222, nats://nats-2:4222"
    unreachable = [x for x in lines if "unreachable" in x]
    assert len(unreachable) == 7  # attempts 1, 2, 4, 8, 16, 32, 64 of 100
    assert unreachable[-1].startswith(
        "NATS at nats://imrelay:***@nats-1:4222, nats://nats-2:4222 "
        "unreachable: ConnectionRefusedError (64 failed attempt(s) in 32s"
    )
    assert "docs/troubleshooting.md#nats-unreachable" in unreachable[0]
    assert lines[-1].startswith("reconnected to NATS at ")
    assert "after 50.0s (100 failed attempt(s))" in lines[-1]
    assert "pw" not in "\n".join(lines)
