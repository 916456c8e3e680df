"""The FastStream broker and durable pull consumers, set up the same way for every consuming service."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from faststream.message.message import StreamMessage
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus.provider import settings_provider_factory
from faststream.nats.response import NatsPublishCommand
from faststream.prometheus import ConsumeAttrs, MetricsSettingsProvider
from faststream.prometheus.middleware import PrometheusMiddleware
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry

from . import subjects
from .config import NatsConfig
from .heartbeat import every
from .telemetry import registry

__all__ = [
    "PatternPrometheusMiddleware",
    "beat_interval",
    "durable_consumer",
    "in_progress",
    "make_broker",
    "update_consumers",
]

NatsMsgs = Msg | Sequence[Msg]
log = logging.getLogger("imrelay.broker")
# the durable consumers each broker declared: (stream, subject, durable name, configuration)
_declared: weakref.WeakKeyDictionary[NatsBroker, list[tuple[str, str, str, ConsumerConfig]]] = (
    weakref.WeakKeyDictionary()
)


class _PatternLabels:
    """FastStream's NATS metrics settings with each subject replaced by its subscription pattern."""

    messaging_system = "nats"

    def __init__(self, inner: MetricsSettingsProvider[Any, Any]) -> None:
        self.inner = inner

    def get_consume_attrs_from_message(self, msg: StreamMessage[Any]) -> ConsumeAttrs:
        attrs = self.inner.get_consume_attrs_from_message(msg)
        return {**attrs, "destination_name": subjects.pattern_of(attrs["destination_name"])}

    def get_publish_destination_name_from_cmd(self, cmd: NatsPublishCommand) -> str:
        return subjects.pattern_of(self.inner.get_publish_destination_name_from_cmd(cmd))


def _pattern_labels(msg: NatsMsgs | None) -> MetricsSettingsProvider[Any, Any] | None:
    inner = settings_provider_factory(msg)
    return _PatternLabels(inner) if inner is not None else None


class PatternPrometheusMiddleware(PrometheusMiddleware[NatsMsgs, NatsPublishCommand]):
    """FastStream's Prometheus middleware for NATS whose ``handler`` and ``destination`` labels are
    subscription patterns (``imrelay.out.>``), not concrete subjects: one series per pattern instead of
    one per bot and partition."""

    def __init__(self, *, registry: CollectorRegistry, app_name: str, metrics_prefix: str) -> None:
        super().__init__(
            settings_provider_factory=_pattern_labels,
            registry=registry,
            app_name=app_name,
            metrics_prefix=metrics_prefix,
        )


def make_broker(cfg: NatsConfig, service: str, graceful_timeout: float) -> NatsBroker:
    """A broker with tracing (trace context in NATS headers) and Prometheus middlewares; on stop it waits
    up to ``graceful_timeout`` for handlers in flight. A NATS outage is logged at a falling rate; the
    broker logs through the service's own handlers (so ``IMRELAY_LOG_FORMAT`` applies to its lines too)."""
    from .jetstream import security
    from .natslog import OutageLog

    outage = OutageLog(logging.getLogger(f"imrelay.{service}.broker"), cfg.servers)
    return NatsBroker(
        cfg.servers,
        security=security(cfg),
        graceful_timeout=graceful_timeout,
        max_reconnect_attempts=-1,
        error_cb=outage.error_cb,
        disconnected_cb=outage.disconnected_cb,
        reconnected_cb=outage.reconnected_cb,
        logger=logging.getLogger(f"imrelay.{service}.faststream"),
        log_level=logging.DEBUG,  # per-message lines only when debugging
        middlewares=[
            NatsTelemetryMiddleware(),
            PatternPrometheusMiddleware(
                registry=registry(), app_name=f"imrelay-{service}", metrics_prefix="imrelay_faststream"
            ),
        ],
    )


def durable_consumer(
    broker: NatsBroker,
    *,
    subject: str,
    stream: str,
    durable: str,
    ack_wait: float,
    max_deliver: int,
    concurrency: int,
    handler: Callable[[NatsMessage], Awaitable[None]],
    max_ack_pending: int | None = None,
    batch_size: int = 1,
) -> None:
    """Attach ``handler`` to a durable, explicit-ack pull consumer. The handler gets the message itself,
    handed over as its decoded body (no dependency injection: FastStream would resolve a ``NatsMessage``
    parameter in a worker thread, a thread hop per message). Handlers ack, nak or dead-letter
    themselves on their last delivery; the server allows one more delivery than ``max_deliver`` so a
    process that dies during the last attempt still gets its message dead-lettered. ``max_ack_pending=1``
    makes the consumer hand out one message at a time across all replicas (strict order). ``batch_size``
    messages are asked for per pull request (a burst is taken in fewer round trips); with ``concurrency``
    above 1 they are handed to the handlers as slots free up."""
    config = ConsumerConfig(
        ack_policy=JsAckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver + 1,
        deliver_policy=DeliverPolicy.ALL,
        max_ack_pending=max_ack_pending,
    )
    _declared.setdefault(broker, []).append((stream, subject, durable, config))
    broker.subscriber(
        subject,
        stream=JStream(stream, declare=False),
        durable=durable,
        pull_sub=PullSub(batch_size=batch_size, timeout=1.0),
        config=config,
        ack_policy=AckPolicy.MANUAL,
        max_workers=concurrency,
        decoder=_the_message,
    )(_plain(handler))


async def update_consumers(js: JetStreamContext, broker: NatsBroker) -> None:
    """Bring the broker's existing durable consumers to their configuration (the ack wait, the deliveries,
    the ack-pending cap): a consumer created by an earlier version keeps its own settings otherwise, as
    subscribing to an existing durable consumer does not change it. Missing ones are left for the
    broker to create."""
    for stream, _subject, durable, config in _declared.get(broker, []):
        try:
            info = await js.consumer_info(stream, durable)
        except NotFoundError:
            continue
        current = info.config
        wanted = (config.ack_wait, config.max_deliver, config.max_ack_pending)
        if (current.ack_wait, current.max_deliver, current.max_ack_pending) == wanted:
            continue
        update = dataclasses.replace(
            current,
            ack_wait=config.ack_wait,
            max_deliver=config.max_deliver,
            max_ack_pending=config.max_ack_pending,
        )
        await js.add_consumer(stream, config=update)
        log.info("consumer %s updated: ack wait %ss (was %ss)", durable, config.ack_wait, current.ack_wait)


async def _the_message(msg: StreamMessage[Any]) -> StreamMessage[Any]:
    """A decoder that leaves the message whole: the handler reads and acks it itself."""
    return msg


def _plain(handler: Callable[[NatsMessage], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    async def consume(message: Any) -> None:
        await handler(message)

    return consume


def beat_interval(ack_wait: float) -> float:
    """How often a message being worked on is reported in progress: three times per ack wait (so one
    lost report does not let it be redelivered), never more often than twice a second."""
    return max(ack_wait / 3, 0.5)


@contextlib.asynccontextmanager
async def in_progress(msg: NatsMessage, ack_wait: float) -> AsyncIterator[None]:
    """While the block runs, tell JetStream every :func:`beat_interval` that ``msg`` is still being
    worked on, so a slow answer is not redelivered to another replica meanwhile."""

    async def report() -> None:
        with contextlib.suppress(Exception):
            await msg.in_progress()

    async with every(beat_interval(ack_wait), report):
        yield
