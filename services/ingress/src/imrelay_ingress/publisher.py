"""Storing normalized messages in JetStream, acknowledged by the server (PubAck) before we answer."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from imrelay import subjects
from imrelay.aibot_streams import KVStreamStore, StreamRecord
from imrelay.config import NatsConfig
from imrelay.events import InboundMessage
from imrelay.jetstream import connect_until_ready, ensure_streams_bucket, streams_present
from imrelay.telemetry import inject_headers

log = logging.getLogger(__name__)


class PublishUnavailable(Exception):
    """JetStream did not confirm the message: the platform must retry later (HTTP 503)."""


class Publisher(Protocol):
    async def publish(self, message: InboundMessage) -> bool:
        """Store ``message``; return True if JetStream already had it (a platform retry)."""
        ...

    async def ready(self) -> bool: ...


class LazyStreamStore:
    """The AI-bot stream store, usable once the publisher has connected (until then: unavailable)."""

    def __init__(self) -> None:
        self.kv: KeyValue | None = None

    def _store(self) -> KVStreamStore:
        if self.kv is None:
            raise PublishUnavailable("not connected to NATS")
        return KVStreamStore(self.kv)

    async def get(self, bot_id: str, sid: str) -> StreamRecord | None:
        return await self._store().get(bot_id, sid)

    async def open(self, bot_id: str, sid: str) -> None:
        await self._store().open(bot_id, sid)

    async def put(self, bot_id: str, sid: str, content: str, finish: bool) -> None:
        await self._store().put(bot_id, sid, content, finish)


class JetStreamPublisher:
    """Publishes to ``imrelay.in.<platform>.<bot>`` with ``Nats-Msg-Id`` = bot + dedupe key, so the
    stream's duplicate window (24 h by default) drops platform retries across replicas and restarts."""

    def __init__(self, cfg: NatsConfig) -> None:
        self.cfg = cfg
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self.streams = LazyStreamStore()

    async def start(self) -> None:
        """Connect in the background: until NATS answers, callbacks get 503 and readyz says no."""
        self._connect_task = asyncio.create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        nc, js = await connect_until_ready(self.cfg, "imrelay-ingress")
        self.streams.kv = await ensure_streams_bucket(js, self.cfg)
        self.nc, self.js = nc, js
        log.info("connected to NATS")

    async def connected(self) -> None:
        """Wait until NATS answered and the streams exist."""
        if self._connect_task is not None:
            await asyncio.shield(self._connect_task)

    async def close(self) -> None:
        if self._connect_task and not self._connect_task.done():
            self._connect_task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:
                await self.nc.close()

    async def ready(self) -> bool:
        return (self.nc is not None and self.js is not None and self.nc.is_connected
                and await streams_present(self.js))

    async def publish(self, message: InboundMessage) -> bool:
        js, nc = self.js, self.nc
        if js is None or nc is None or not nc.is_connected:
            raise PublishUnavailable("not connected to NATS")
        headers = {subjects.HDR_MSG_ID: f"{message.bot_id}:{message.platform_message_id}"}
        inject_headers(headers)
        try:
            ack = await js.publish(
                subjects.inbound_subject(message.platform.value, message.bot_id),
                message.model_dump_json().encode(), stream=subjects.STREAM_IN, headers=headers,
                timeout=self.cfg.publish_timeout_seconds,
            )
        except Exception as exc:
            raise PublishUnavailable(type(exc).__name__) from exc
        return bool(ack.duplicate)
