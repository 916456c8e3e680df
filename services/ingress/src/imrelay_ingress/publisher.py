"""Storing normalized messages in JetStream, acknowledged by the server (PubAck) before we answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from imrelay import subjects
from imrelay.answer_streams import KVStreamStore, StreamRecord
from imrelay.config import NatsConfig
from imrelay.errors import PublishUnavailable
from imrelay.events import InboundMessage
from imrelay.jetstream import (
    connect_until_ready,
    ensure_replay_bucket,
    ensure_streams_bucket,
    streams_present,
)
from imrelay.media import MediaRef
from imrelay.media.store import ObjectMediaStore
from imrelay.replay import KVReplayGuard
from imrelay.telemetry import inject_headers

log = logging.getLogger(__name__)


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

    async def put(
        self, bot_id: str, sid: str, content: str, finish: bool, media: Sequence[MediaRef] = ()
    ) -> None:
        await self._store().put(bot_id, sid, content, finish, media)


class LazyMediaReader:
    """Reads answers' images from the media bucket (written by the worker) for the poll answers that show
    them; the bucket is opened on first use."""

    def __init__(self) -> None:
        self.js: JetStreamContext | None = None
        self._store: ObjectMediaStore | None = None

    async def get(self, ref: MediaRef) -> bytes:
        if self._store is None:
            if self.js is None:
                raise PublishUnavailable("not connected to NATS")
            self._store = ObjectMediaStore(await self.js.object_store(subjects.OBJ_MEDIA))
        return await self._store.get(ref)


class ReplayGuard(Protocol):
    async def claim(self, key: str, fingerprint: str) -> bool:
        """Record a once-only signature; True if new or seen with the same body fingerprint."""
        ...


class LazyReplayGuard:
    """The replay record, usable once the publisher has connected (until then: unavailable)."""

    def __init__(self) -> None:
        self.guard: KVReplayGuard | None = None

    async def claim(self, key: str, fingerprint: str) -> bool:
        if self.guard is None:
            raise PublishUnavailable("not connected to NATS")
        return await self.guard.claim(key, fingerprint)


class JetStreamPublisher:
    """Publishes to ``imrelay.in.<platform>.<bot>`` with ``Nats-Msg-Id`` = bot + dedupe key, so the
    stream's duplicate window (24 h by default) drops platform retries across replicas and restarts."""

    def __init__(self, cfg: NatsConfig) -> None:
        self.cfg = cfg
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self.streams = LazyStreamStore()
        self.replay = LazyReplayGuard()
        self.media = LazyMediaReader()

    async def start(self) -> None:
        """Connect in the background: until NATS answers, callbacks get 503 and readyz says no."""
        self._connect_task = asyncio.create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        nc, js = await connect_until_ready(self.cfg, "imrelay-ingress")
        self.streams.kv = await ensure_streams_bucket(js, self.cfg)
        self.replay.guard = KVReplayGuard(await ensure_replay_bucket(js, self.cfg))
        self.nc, self.js = nc, js
        self.media.js = js
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
        return (
            self.nc is not None
            and self.js is not None
            and self.nc.is_connected
            and await streams_present(self.js)
        )

    async def publish(self, message: InboundMessage) -> bool:
        """Store ``message``, retrying with the same ``Nats-Msg-Id`` until the deadline: a retry of a
        publish whose PubAck was lost is dropped by the stream as a duplicate, never stored twice."""
        headers = {subjects.HDR_MSG_ID: f"{message.bot_id}:{message.platform_message_id}"}
        inject_headers(headers)
        subject = subjects.inbound_subject(message.platform, message.bot_id)
        payload = message.model_dump_json().encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.ingress_publish_deadline_seconds
        attempt = 0
        while True:
            attempt += 1
            js, nc = self.js, self.nc
            remaining = deadline - loop.time()
            try:
                if js is None or nc is None or nc.is_closed:
                    raise PublishUnavailable("not connected to NATS")
                ack = await js.publish(
                    subject,
                    payload,
                    stream=subjects.STREAM_IN,
                    headers=headers,
                    timeout=max(0.05, min(self.cfg.publish_timeout_seconds, remaining)),
                )
                if attempt > 1:
                    log.info("stored after %d attempts", attempt)
                return bool(ack.duplicate)
            except Exception as exc:
                wait = min(0.1 * 2 ** (attempt - 1), 0.5)
                if deadline - loop.time() <= wait:
                    reason = str(exc) if isinstance(exc, PublishUnavailable) else type(exc).__name__
                    raise PublishUnavailable(f"{reason} after {attempt} attempt(s)") from exc
                await asyncio.sleep(wait)
