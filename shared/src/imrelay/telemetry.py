"""Telemetry names and setup, defined once. Dashboards and alerts use only these names.

==============================================  =========  =======================  =========================
metric                                          type       labels                   meaning
==============================================  =========  =======================  =========================
imrelay_callbacks_total                         counter    platform, bot, outcome   callbacks by outcome
imrelay_build_info                              gauge      version                  1; the running version
imrelay_bot_configured                          gauge      platform, bot, mode      1 for each configured bot
imrelay_callback_ack_seconds                    histogram  platform, bot, outcome   callback received -> ack
imrelay_llm_time_to_first_token_seconds         histogram  platform, bot, backend,  request -> first delta
                                                           model
imrelay_llm_duration_seconds                    histogram  platform, bot, backend,  whole backend call
                                                           model, outcome
imrelay_llm_tokens_total                        counter    backend, model, type     tokens the model reported
imrelay_deliveries_total                        counter    platform, bot, outcome   platform send calls
imrelay_delivery_seconds                        histogram  platform, bot            one platform send call
imrelay_rate_limit_wait_seconds                 histogram  platform, bot            time waited for a limit
imrelay_token_refreshes_total                   counter    platform, bot, outcome   token endpoint calls
imrelay_dlq_total                               counter    platform, bot, stage     dead letters written
imrelay_first_reply_seconds                     histogram  platform, bot            callback -> 1st delivery
imrelay_consumer_pending_messages               gauge      consumer                 stored, not yet delivered
imrelay_consumer_ack_pending_messages           gauge      consumer                 delivered, not yet acked
imrelay_connector_lease_held                    gauge      platform, bot            1 while this replica owns
imrelay_connector_events_total                  counter    platform, bot, outcome   connect/kicked/lost/...
imrelay_connector_standing_down                 gauge      platform, bot, reason    1 while down on purpose
imrelay_connector_bot_owned                     gauge      platform, bot            0: no owner cluster-wide
imrelay_connector_connected                     gauge      platform, bot            1 while connected here
imrelay_connector_last_frame_timestamp_seconds  gauge      platform, bot            unix time of last frame
imrelay_connector_messages_total                counter    platform, bot, outcome   messages it received
imrelay_http_connections_open                   gauge      listener                 open HTTP connections
imrelay_http_connection_timeouts_total          counter    listener, reason         closed by a deadline
imrelay_http_connections_refused_total          counter    listener                 refused at the cap (503)
==============================================  =========  =======================  =========================

Outcomes: callbacks ``accepted | duplicate | stream_poll | rejected_signature | rejected_replay |
rejected_malformed | rejected_oversize | unknown_bot | unavailable``; LLM ``ok | error | timeout``;
deliveries ``ok | retry | duplicate_skipped | failed | update | update_failed``; tokens ``ok | error``;
model token ``type`` ``input | output``; connector messages ``stored | duplicate`` (the platform sent it
again) ``| failed`` (not stored). A connection's last frame is the last thing it reported: its platform
accepting it, a message, or a platform event. HTTP listeners ``public | admin``; timeout reasons
``idle`` (no byte sent), ``header``, ``body`` (408) and ``keep_alive`` (idle after an answer: the normal end
of a connection).

Tracing: W3C trace context travels in NATS headers (``traceparent``/``tracestate``). OTLP export is
configured by the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` turns it on); without it
spans are not recorded (they keep their ids for log lines and pass their context on, not sampled). HTTP
client spans follow the stable HTTP semantic conventions; every span is scrubbed of credentials before export
(see :mod:`imrelay.redact`), and so is every log record.

Labels carry only names from the configuration (platform, bot id, backend, model, consumer) and fixed
outcome words, never a value from a request or a secret.

Counters start at 0: :func:`start_series` creates, when a service starts, every series its configured
bots can increment, so ``increase()`` sees the first dead letter or token error after a restart (a series
born at 1 has no earlier sample to increase from). FastStream's own metrics
(``imrelay_faststream_*``) are labelled with the subscription pattern (``imrelay.out.>``), not the
concrete subject, so their number does not grow with bots and partitions (see :mod:`imrelay.broker`).

Model calls get a span ``chat <model>`` with the GenAI attributes ``gen_ai.operation.name``,
``gen_ai.system``, ``gen_ai.request.model`` and, when the backend reports them,
``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from .redact import RedactingSpanExporter, httpx_request_hook, install_log_redaction

if TYPE_CHECKING:
    import httpx

    from .config import Settings

__all__ = [
    "BOT_CONFIGURED",
    "BUILD_INFO",
    "CALLBACKS",
    "CALLBACK_ACK",
    "CONNECTIONS_OPEN",
    "CONNECTIONS_REFUSED",
    "CONNECTIONS_TIMED_OUT",
    "DELIVERIES",
    "DELIVERY_SECONDS",
    "DLQ",
    "FIRST_REPLY",
    "LLM_DURATION",
    "LLM_TOKENS",
    "LLM_TTFT",
    "RATE_LIMIT_WAIT",
    "TOKEN_REFRESHES",
    "extract_context",
    "inject_headers",
    "instrument_httpx",
    "setup_logging",
    "setup_tracing",
    "start_series",
]

PREFIX = "imrelay_"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

BUILD_INFO = Gauge("imrelay_build_info", "Always 1; the version label names the running imrelay", ["version"])
BOT_CONFIGURED = Gauge(
    "imrelay_bot_configured",
    "1 for each bot in this process's configuration (mode: callback or "
    "long_connection); alerts compare it with what runs",
    ["platform", "bot", "mode"],
)
CALLBACKS = Counter(
    "imrelay_callbacks", "Platform callbacks received, by outcome", ["platform", "bot", "outcome"]
)
CALLBACK_ACK = Histogram(
    "imrelay_callback_ack_seconds",
    "Time from callback received to the platform's ack, by outcome",
    ["platform", "bot", "outcome"],
    buckets=_LATENCY_BUCKETS,
)
LLM_TTFT = Histogram(
    "imrelay_llm_time_to_first_token_seconds",
    "Backend request to first answer token",
    ["platform", "bot", "backend", "model"],
    buckets=_LLM_BUCKETS,
)
LLM_DURATION = Histogram(
    "imrelay_llm_duration_seconds",
    "Whole backend answer duration, by outcome",
    ["platform", "bot", "backend", "model", "outcome"],
    buckets=_LLM_BUCKETS,
)
LLM_TOKENS = Counter(
    "imrelay_llm_tokens",
    "Tokens the model reported using, by type (input: the prompt, output: the answer)",
    ["backend", "model", "type"],
)
DELIVERIES = Counter("imrelay_deliveries", "Platform send calls, by outcome", ["platform", "bot", "outcome"])
DELIVERY_SECONDS = Histogram(
    "imrelay_delivery_seconds",
    "Duration of one platform send call",
    ["platform", "bot"],
    buckets=_LATENCY_BUCKETS,
)
RATE_LIMIT_WAIT = Histogram(
    "imrelay_rate_limit_wait_seconds",
    "Time a message waited for a platform rate limit",
    ["platform", "bot"],
    buckets=_LLM_BUCKETS,
)
TOKEN_REFRESHES = Counter(
    "imrelay_token_refreshes", "Access-token endpoint calls, by outcome", ["platform", "bot", "outcome"]
)
DLQ = Counter("imrelay_dlq", "Messages written to a dead-letter subject", ["platform", "bot", "stage"])
CONSUMER_PENDING = Gauge(
    "imrelay_consumer_pending_messages",
    "Messages stored for a JetStream consumer, not yet delivered",
    ["consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "imrelay_consumer_ack_pending_messages",
    "Messages delivered to a JetStream consumer, not yet acked",
    ["consumer"],
)
CONNECTOR_LEASE = Gauge(
    "imrelay_connector_lease_held",
    "1 while this connector replica owns the bot's socket",
    ["platform", "bot"],
)
CONNECTOR_EVENTS = Counter(
    "imrelay_connector_events",
    "Connector socket events: connected, kicked (replaced by a newer "
    "connection), refused (bot id or secret refused), lease_lost, reconnect, crashed (restarted)",
    ["platform", "bot", "outcome"],
)
CONNECTOR_STANDING_DOWN = Gauge(
    "imrelay_connector_standing_down",
    "1 while this replica owns the bot's lease but keeps its socket "
    "down on purpose: reason kicked (the bot was taken by another instance) or refused (the platform refused "
    "the bot id or secret)",
    ["platform", "bot", "reason"],
)
CONNECTOR_BOT_OWNED = Gauge(
    "imrelay_connector_bot_owned",
    "1 while some connector replica holds the bot's lease, as this replica "
    "reads the lease bucket; 0 when the bot has no owner cluster-wide (or the bucket cannot be read)",
    ["platform", "bot"],
)
CONNECTOR_CONNECTED = Gauge(
    "imrelay_connector_connected",
    "1 while this replica's connection of the bot is up (the platform accepted it)",
    ["platform", "bot"],
)
CONNECTOR_LAST_FRAME = Gauge(
    "imrelay_connector_last_frame_timestamp_seconds",
    "Unix time of the last frame the bot's connection reported to this replica: its platform accepting "
    "it, a message, or a platform event",
    ["platform", "bot"],
)
CONNECTOR_MESSAGES = Counter(
    "imrelay_connector_messages",
    "Messages received over the bot's connection, by outcome: stored, duplicate (stored already: the "
    "platform sent it again), failed (not stored)",
    ["platform", "bot", "outcome"],
)
CONNECTIONS_OPEN = Gauge(
    "imrelay_http_connections_open",
    "Open connections on an HTTP port",
    ["listener"],
)
CONNECTIONS_TIMED_OUT = Counter(
    "imrelay_http_connection_timeouts",
    "HTTP connections closed by a deadline, by reason (idle, header, body, keep_alive)",
    ["listener", "reason"],
)
CONNECTIONS_REFUSED = Counter(
    "imrelay_http_connections_refused",
    "HTTP connections refused with a 503 at the connection cap",
    ["listener"],
)
FIRST_REPLY = Histogram(
    "imrelay_first_reply_seconds",
    "End to end: callback received to first reply delivered",
    ["platform", "bot"],
    buckets=_LLM_BUCKETS,
)
MEDIA = Counter(
    "imrelay_media",
    "Pieces of media by direction (in: from users, out: in answers), kind and outcome",
    ["direction", "platform", "kind", "outcome"],
)
MEDIA_BYTES = Counter(
    "imrelay_media_bytes",
    "Bytes of media stored (in) or sent (out), by direction and kind",
    ["direction", "platform", "kind"],
)


def registry() -> CollectorRegistry:
    return REGISTRY


CALLBACK_OUTCOMES = (
    "accepted",
    "duplicate",
    "stream_poll",
    "rejected_signature",
    "rejected_replay",
    "rejected_malformed",
    "rejected_oversize",
    "unavailable",
)
DELIVERY_OUTCOMES = ("ok", "retry", "duplicate_skipped", "failed", "update", "update_failed")
TOKEN_TYPES = ("input", "output")
# ok | reused (a redelivered message's stored media) | transcribed | one of imrelay.media.MediaProblem
MEDIA_OUTCOMES = (
    "ok",
    "reused",
    "transcribed",
    "oversize",
    "unsupported",
    "download_failed",
    "upload_failed",
    "blocked",
    "not_read",
)


def model_label(model: str | None) -> str:
    """The ``model`` label of a backend call: the configured model, ``default`` when the backend (a Dify
    or FastGPT app, echo) chooses its own."""
    return model or "default"


def start_series(service: str, settings: Settings) -> None:
    """Set the build info and the configured bots, and create at 0 every counter series ``service`` can
    increment for its configured bots, so the first increment after a start is an increase."""
    from . import __version__, platforms
    from .config import BackendKind

    BUILD_INFO.labels(version=__version__).set(1)
    for bot in settings.bots:
        BOT_CONFIGURED.labels(platform=bot.platform, bot=bot.id, mode=bot.mode).set(1)
    for bot in settings.bots:
        labels = {"platform": bot.platform, "bot": bot.id}
        if service == "ingress" and bot.mode == "callback":
            for outcome in CALLBACK_OUTCOMES:
                CALLBACKS.labels(outcome=outcome, **labels)
        elif service == "worker":
            DLQ.labels(stage="worker", **labels)
            for kind in ("image", "file", "voice", "video"):
                MEDIA_BYTES.labels(direction="in", platform=bot.platform, kind=kind)
                for outcome in MEDIA_OUTCOMES:
                    MEDIA.labels(direction="in", platform=bot.platform, kind=kind, outcome=outcome)
            cfg = settings.backends.get(bot.backend)
            if cfg is not None and cfg.kind is not BackendKind.ECHO:
                for kind in TOKEN_TYPES:
                    LLM_TOKENS.labels(
                        backend=bot.backend, model=model_label(bot.model or cfg.model), type=kind
                    )
        elif service == "sender":
            DLQ.labels(stage="sender", **labels)
            for outcome in DELIVERY_OUTCOMES:
                DELIVERIES.labels(outcome=outcome, **labels)
            for outcome in ("ok", "unsupported", "oversize", "upload_failed"):
                MEDIA.labels(direction="out", platform=bot.platform, kind="image", outcome=outcome)
            MEDIA_BYTES.labels(direction="out", platform=bot.platform, kind="image")
            if platforms.spec_for(bot).capabilities.needs_token:
                for outcome in ("ok", "error"):
                    TOKEN_REFRESHES.labels(outcome=outcome, **labels)
    if service == "ingress":
        CALLBACKS.labels(platform="unknown", bot="unknown", outcome="unknown_bot")


_tracing_ready = False


def setup_tracing(service_name: str) -> None:
    """Install a tracer provider once per process; export over OTLP when OTEL_* asks for it."""
    global _tracing_ready
    if _tracing_ready:
        return
    _tracing_ready = True
    use_stable_http_semconv()
    trace.set_tracer_provider(tracer_provider(service_name))


def tracer_provider(service_name: str) -> TracerProvider:
    """The process's tracer provider: exporting over OTLP when OTEL_* asks for it, else not recording."""
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    if exports_traces():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(RedactingSpanExporter(OTLPSpanExporter())))
    else:
        # Nothing would receive a recorded span, so none is recorded: spans still get ids (log lines
        # carry the trace id, NATS headers the context, marked not sampled) at a third of the cost.
        provider = TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    return provider


def exports_traces() -> bool:
    """Whether the ``OTEL_*`` variables ask for OTLP export of traces."""
    wants_otlp = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    return bool(wants_otlp) and os.environ.get("OTEL_TRACES_EXPORTER", "otlp") != "none"


def use_stable_http_semconv() -> None:
    """Opt in to the stable HTTP semantic conventions (``url.full``, ``http.request.method`` ...) unless
    the operator already chose an HTTP mode in ``OTEL_SEMCONV_STABILITY_OPT_IN``."""
    modes = [m.strip() for m in os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",") if m.strip()]
    if not any(m in ("http", "http/dup") for m in modes):
        os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = ",".join([*modes, "http"])


def instrument_httpx(client: httpx.AsyncClient) -> None:
    """Trace ``client``'s requests (stable HTTP conventions), their URLs without credentials."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    use_stable_http_semconv()
    HTTPXClientInstrumentor().instrument_client(client, request_hook=httpx_request_hook)


def inject_headers(headers: MutableMapping[str, str], context: Context | None = None) -> None:
    """Write the current (or given) trace context into NATS headers."""
    propagate.inject(headers, context=context)


def extract_context(headers: Mapping[str, str] | None) -> Context:
    return propagate.extract(dict(headers or {}))


def setup_logging(service: str) -> None:
    level = os.environ.get("IMRELAY_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
    )
    # No secret and no control character from an untrusted value in any record, whoever writes it.
    install_log_redaction()
    # httpx logs full request URLs at INFO, and some platforms put the access token in the query string.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if os.environ.get("IMRELAY_LOG_FORMAT", "text").strip().lower() == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter(service))


class JsonFormatter(logging.Formatter):
    """``IMRELAY_LOG_FORMAT=json``: one JSON object a line, with the current trace's ``trace_id`` and
    ``span_id`` (hex, as OpenTelemetry backends show them) when a span is active."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import UTC, datetime

        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": f"imrelay-{self.service}",
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            entry["trace_id"] = format(ctx.trace_id, "032x")
            entry["span_id"] = format(ctx.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
