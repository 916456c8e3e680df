"""The FastStream broker and durable pull consumers, set up the same way for every consuming service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy

from .config import NatsConfig
from .telemetry import registry

__all__ = ["durable_consumer", "in_progress", "make_broker"]


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
            NatsPrometheusMiddleware(registry=registry(), app_name=f"imrelay-{service}",
                                     metrics_prefix="imrelay_faststream"),
        ],
    )


def durable_consumer(broker: NatsBroker, *, subject: str, stream: str, durable: str,
                     ack_wait: float, max_deliver: int, concurrency: int,
                     handler: Callable[[NatsMessage], Awaitable[None]],
                     max_ack_pending: int | None = None) -> None:
    """Attach ``handler`` to a durable, explicit-ack pull consumer. Handlers ack, nak or dead-letter
    themselves on their last delivery; the server allows one more delivery than ``max_deliver`` so a
    process that dies during the last attempt still gets its message dead-lettered. ``max_ack_pending=1``
    makes the consumer hand out one message at a time across all replicas (strict order)."""
    broker.subscriber(
        subject,
        stream=JStream(stream, declare=False),
        durable=durable,
        pull_sub=PullSub(batch_size=1, timeout=1.0),
        config=ConsumerConfig(
            ack_policy=JsAckPolicy.EXPLICIT, ack_wait=ack_wait, max_deliver=max_deliver + 1,
            deliver_policy=DeliverPolicy.ALL, max_ack_pending=max_ack_pending,
        ),
        ack_policy=AckPolicy.MANUAL,
        max_workers=concurrency,
    )(handler)


@contextlib.asynccontextmanager
async def in_progress(msg: NatsMessage, ack_wait: float) -> AsyncIterator[None]:
    """While the block runs, tell JetStream every ``ack_wait / 3`` seconds that ``msg`` is still being
    worked on, so a slow answer is not redelivered to another replica meanwhile."""

    async def beat() -> None:
        interval = max(ack_wait / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
