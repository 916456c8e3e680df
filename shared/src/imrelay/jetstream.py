"""Connecting to NATS and declaring imrelay's streams and KV buckets (idempotent, run by every service)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from . import subjects as s
from .config import NatsConfig

log = logging.getLogger(__name__)

__all__ = ["Buckets", "connect", "ensure_buckets", "ensure_streams", "stream_configs"]

DAY = 86400.0


def _stream(cfg: NatsConfig, name: str, subject: str, max_age: float,
            duplicate_window: float) -> StreamConfig:
    return StreamConfig(
        name=name, subjects=[subject], max_age=max_age, duplicate_window=duplicate_window,
        storage=StorageType.FILE, num_replicas=cfg.replicas, retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
    )


def stream_configs(cfg: NatsConfig) -> list[StreamConfig]:
    # Platform retries of one message within the dedupe window are dropped by the server (Nats-Msg-Id).
    window = float(cfg.dedupe_window_seconds)
    return [
        _stream(cfg, s.STREAM_IN, s.IN_ALL, 7 * DAY, window),
        _stream(cfg, s.STREAM_OUT, s.OUT_ALL, 7 * DAY, window),
        _stream(cfg, s.STREAM_DLQ, s.DLQ_ALL, 30 * DAY, 120.0),
    ]


async def connect(cfg: NatsConfig, name: str, *, max_reconnect_attempts: int = -1) -> NATS:
    """Connect with endless reconnects (a service keeps running through a NATS restart)."""

    async def on_error(e: Exception) -> None:
        log.warning("nats: %s", type(e).__name__)

    async def on_disconnect() -> None:
        log.info("nats: disconnected")

    async def on_reconnect() -> None:
        log.info("nats: reconnected")

    return await nats.connect(
        cfg.servers, name=name, connect_timeout=cfg.connect_timeout_seconds,
        max_reconnect_attempts=max_reconnect_attempts, reconnect_time_wait=0.5,
        allow_reconnect=True, error_cb=on_error, disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


async def connect_until_ready(cfg: NatsConfig, name: str) -> tuple[NATS, JetStreamContext]:
    """Connect and declare the streams, retrying with backoff until NATS answers."""
    import asyncio

    delay = 0.2
    while True:
        try:
            nc = await connect(cfg, name)
            js = nc.jetstream(timeout=cfg.publish_timeout_seconds)
            await ensure_streams(js, cfg)
            return nc, js
        except Exception as exc:
            log.warning("NATS not reachable yet (%s); retrying", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def ensure_streams(js: JetStreamContext, cfg: NatsConfig) -> None:
    for conf in stream_configs(cfg):
        try:
            await js.stream_info(conf.name or "")
        except NotFoundError:
            try:
                await js.add_stream(conf)
                log.info("created stream %s", conf.name)
            except BadRequestError:
                # another replica created it at the same moment
                await js.stream_info(conf.name or "")
            continue
        await js.update_stream(conf)


@dataclass(frozen=True, slots=True)
class Buckets:
    tokens: KeyValue
    deliveries: KeyValue
    ratelimits: KeyValue


async def _bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    try:
        return await js.key_value(config.bucket)
    except (NotFoundError, Exception) as exc:  # nats-py raises BucketNotFoundError (a NotFoundError)
        if not isinstance(exc, NotFoundError):
            raise
    return await js.create_key_value(config)


async def ensure_buckets(js: JetStreamContext, cfg: NatsConfig) -> Buckets:
    tokens = await _bucket(js, KeyValueConfig(
        bucket=s.KV_TOKENS, history=1, storage=StorageType.FILE, replicas=cfg.replicas,
        description="platform access tokens and refresh locks",
    ))
    deliveries = await _bucket(js, KeyValueConfig(
        bucket=s.KV_DELIVERIES, history=1, ttl=float(cfg.dedupe_window_seconds),
        storage=StorageType.FILE, replicas=cfg.replicas,
        description="delivered reply parts (reply id + part index)",
    ))
    ratelimits = await _bucket(js, KeyValueConfig(
        bucket=s.KV_RATELIMITS, history=1, ttl=DAY, storage=StorageType.FILE, replicas=cfg.replicas,
        description="platform rate-limit windows shared by sender replicas",
    ))
    return Buckets(tokens=tokens, deliveries=deliveries, ratelimits=ratelimits)


async def ensure_memory_bucket(js: JetStreamContext, cfg: NatsConfig, ttl: float) -> KeyValue:
    return await _bucket(js, KeyValueConfig(
        bucket=s.KV_MEMORY, history=1, ttl=ttl, storage=StorageType.FILE, replicas=cfg.replicas,
        description="conversation memory: recent turns and backend sessions",
    ))


async def ensure_streams_bucket(js: JetStreamContext, cfg: NatsConfig) -> KeyValue:
    return await _bucket(js, KeyValueConfig(
        bucket=s.KV_STREAMS, history=1, ttl=3600.0, storage=StorageType.FILE, replicas=cfg.replicas,
        description="WeCom AI-bot answer streams (content so far, finish)",
    ))


# A signed DingTalk header pair is accepted for one hour either way at most: kept this long, it is never
# accepted twice with different bodies.
REPLAY_TTL_SECONDS = 2 * 3600.0


async def ensure_replay_bucket(js: JetStreamContext, cfg: NatsConfig) -> KeyValue:
    return await _bucket(js, KeyValueConfig(
        bucket=s.KV_REPLAY, history=1, ttl=REPLAY_TTL_SECONDS, storage=StorageType.FILE,
        replicas=cfg.replicas, description="callback signatures seen once (key: digest, value: body digest)",
    ))


async def ensure_leases_bucket(js: JetStreamContext, cfg: NatsConfig) -> KeyValue:
    return await _bucket(js, KeyValueConfig(
        bucket=s.KV_LEASES, history=1, storage=StorageType.FILE, replicas=cfg.replicas,
        description="connector socket leases: one owner per bot",
    ))


async def streams_present(js: JetStreamContext) -> bool:
    for name in (s.STREAM_IN, s.STREAM_OUT, s.STREAM_DLQ):
        try:
            await js.stream_info(name)
        except Exception:
            return False
    return True
