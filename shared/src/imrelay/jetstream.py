"""Connecting to NATS and declaring imrelay's streams and KV buckets (idempotent, run by every service)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import nats
from faststream.nats.security import (
    NatsCredentials,
    NatsNKey,
    NatsSecurity,
    NatsToken,
    NatsUserPassword,
    parse_security,
)
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from . import subjects as s
from .config import NatsConfig
from .errors import NatsRefusedError
from .natslog import TROUBLESHOOTING, OutageLog, redact_url, should_log

log = logging.getLogger(__name__)

__all__ = [
    "Buckets",
    "connect",
    "connect_options",
    "ensure_buckets",
    "ensure_media_store",
    "ensure_tokens_bucket",
    "ensure_streams",
    "security",
    "stream_configs",
]

DAY = 86400.0


def _stream(
    cfg: NatsConfig, name: str, subject: str, max_age: float, duplicate_window: float
) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=[subject],
        max_age=max_age,
        duplicate_window=duplicate_window,
        storage=StorageType.FILE,
        num_replicas=cfg.replicas,
        retention=RetentionPolicy.LIMITS,
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


def security(cfg: NatsConfig) -> NatsSecurity | None:
    """The client side of ``nats.auth`` and ``nats.tls``, for nats-py and FastStream alike."""
    ctx: ssl.SSLContext | None = None
    tls = cfg.tls
    if cfg.uses_tls:
        ctx = ssl.create_default_context(cafile=tls.ca_file if tls else None)
        if tls and tls.cert_file and tls.key_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
    opts: dict[str, Any] = {"ssl_context": ctx, "tls_hostname": tls.server_name if tls else None}
    auth = cfg.auth
    if auth.user is not None and auth.password is not None:
        return NatsUserPassword(auth.user, auth.password.get_secret_value(), **opts)
    if auth.token is not None:
        return NatsToken(auth.token.get_secret_value(), **opts)
    if auth.nkey_seed_file is not None:
        return NatsNKey.from_file(auth.nkey_seed_file, **opts)
    if auth.creds_file is not None:
        return NatsCredentials.from_file(auth.creds_file, **opts)
    return NatsSecurity(**opts) if ctx is not None else None


def connect_options(cfg: NatsConfig) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect``: credentials and TLS."""
    return {k: v for k, v in parse_security(security(cfg)).items() if v is not None}


def is_refusal(exc: BaseException) -> bool:
    """A server's answer that trying again will not change: bad credentials, or a TLS failure."""
    text = str(exc).lower()
    return isinstance(exc, ssl.SSLError) or any(
        w in text
        for w in (
            "authorization violation",
            "authentication",
            "user authentication expired",
            "account authentication expired",
        )
    )


async def connect(
    cfg: NatsConfig, name: str, *, max_reconnect_attempts: int = -1, outage: OutageLog | None = None
) -> NATS:
    """Connect, then keep reconnecting (for ever by default: a service keeps running through a NATS
    restart); an outage is logged with the servers' URLs at a falling rate
    (:class:`~imrelay.natslog.OutageLog`). A first connection refused for its credentials or TLS raises
    :class:`NatsRefusedError` at once; one that finds no server raises the client's error (callers
    retry, passing the same ``outage`` so that the log counts every attempt of the outage)."""
    outage = outage or OutageLog(log, cfg.servers)
    refused: list[BaseException] = []

    async def on_error(e: Exception) -> None:
        if is_refusal(e):
            refused.append(e)
        await outage.error_cb(e)

    attempt = asyncio.ensure_future(
        nats.connect(
            cfg.servers,
            name=name,
            connect_timeout=cfg.connect_timeout_seconds,
            # two tries per server, then an error: nats-py's 0 would mean "for ever"
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=outage.disconnected_cb,
            reconnected_cb=outage.reconnected_cb,
            **connect_options(cfg),
        )
    )
    try:
        # a refusal is final at once (the client itself may go on retrying a failed TLS handshake)
        while not refused:
            done, _ = await asyncio.wait([attempt], timeout=0.05)
            if done:
                break
    except BaseException:
        attempt.cancel()
        raise
    if refused and not attempt.done():
        attempt.cancel()
        with contextlib.suppress(BaseException):
            await attempt
        raise NatsRefusedError(cfg.url, _reason(refused[-1]))
    try:
        nc = attempt.result()
    except Exception as exc:
        if refused or is_refusal(exc):
            raise NatsRefusedError(cfg.url, _reason(refused[-1] if refused else exc)) from None
        raise
    nc.options["max_reconnect_attempts"] = max_reconnect_attempts  # the first connection is made
    outage.connected()
    return nc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or type(exc).__name__}"
    return str(exc).removeprefix("nats: ").strip("'")


async def connect_until_ready(cfg: NatsConfig, name: str) -> tuple[NATS, JetStreamContext]:
    """Connect and declare the streams, retrying with backoff until NATS answers; credentials or TLS
    that the server refuses raise :class:`NatsRefusedError` (retrying would not help). Failed connection
    attempts are logged by one :class:`~imrelay.natslog.OutageLog` at a falling rate."""
    outage = OutageLog(log, cfg.servers)
    delay = 0.2
    attempt = 0
    while True:
        try:
            nc = await connect(cfg, name, outage=outage)
        except NatsRefusedError:
            raise
        except Exception:  # no server answered: the outage log said so
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        try:
            js = nc.jetstream(timeout=cfg.publish_timeout_seconds)
            await ensure_streams(js, cfg)
            return nc, js
        except Exception as exc:
            attempt += 1
            if should_log(attempt, every=12):
                urls = ", ".join(redact_url(u) for u in cfg.servers)
                log.warning(
                    "NATS at %s answers, but its streams could not be set up: %s (attempt %d; "
                    "retrying, up to every 5s; see %s)",
                    urls,
                    type(exc).__name__,
                    attempt,
                    TROUBLESHOOTING,
                )
            with contextlib.suppress(Exception):
                await nc.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def ensure_streams(js: JetStreamContext, cfg: NatsConfig) -> None:
    """Create the streams that are missing; update one whose settings differ from the configuration. A
    service whose NATS user may not update streams (least privilege) logs the difference and goes on."""
    for conf in stream_configs(cfg):
        try:
            info = await js.stream_info(conf.name or "")
        except NotFoundError:
            try:
                await js.add_stream(conf)
                log.info("created stream %s", conf.name)
            except BadRequestError:
                # another replica created it at the same moment
                await js.stream_info(conf.name or "")
            continue
        if not _stream_differs(info.config, conf):
            continue
        try:
            await js.update_stream(conf)
            log.info("updated stream %s", conf.name)
        except Exception as exc:
            log.warning(
                "stream %s differs from the configuration but could not be updated (%s): "
                "run `imrelay nats setup` with an admin user",
                conf.name,
                type(exc).__name__,
            )


def _stream_differs(have: StreamConfig, want: StreamConfig) -> bool:
    fields = ("subjects", "max_age", "duplicate_window", "num_replicas", "storage", "retention", "discard")
    return any(getattr(have, f) != getattr(want, f) for f in fields)


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


async def ensure_tokens_bucket(js: JetStreamContext, cfg: NatsConfig) -> KeyValue:
    return await _bucket(
        js,
        KeyValueConfig(
            bucket=s.KV_TOKENS,
            history=1,
            storage=StorageType.FILE,
            replicas=cfg.replicas,
            description="platform access tokens and refresh locks",
        ),
    )


async def ensure_deliveries_bucket(js: JetStreamContext, cfg: NatsConfig) -> KeyValue:
    """Delivery records: the sender's per reply part, the worker's per answered message."""
    return await _bucket(
        js,
        KeyValueConfig(
            bucket=s.KV_DELIVERIES,
            history=1,
            ttl=float(cfg.dedupe_window_seconds),
            storage=StorageType.FILE,
            replicas=cfg.replicas,
            description="delivered reply parts (reply id + part index)",
        ),
    )


async def ensure_buckets(js: JetStreamContext, cfg: NatsConfig) -> Buckets:
    tokens = await ensure_tokens_bucket(js, cfg)
    deliveries = await ensure_deliveries_bucket(js, cfg)
    ratelimits = await _bucket(
        js,
        KeyValueConfig(
            bucket=s.KV_RATELIMITS,
            history=1,
            ttl=DAY,
            storage=StorageType.FILE,
            replicas=cfg.replicas,
            description="platform rate-limit windows shared by sender replicas",
        ),
    )
    return Buckets(tokens=tokens, deliveries=deliveries, ratelimits=ratelimits)


async def ensure_media_store(js: JetStreamContext, cfg: NatsConfig, ttl: float) -> ObjectStore:
    """The media bucket (pictures, files and voice of messages and answers), entries expiring after
    ``ttl`` seconds."""
    try:
        return await js.object_store(s.OBJ_MEDIA)
    except NotFoundError:
        pass
    return await js.create_object_store(
        s.OBJ_MEDIA,
        config=ObjectStoreConfig(
            bucket=s.OBJ_MEDIA,
            ttl=ttl,
            storage=StorageType.FILE,
            replicas=cfg.replicas,
            description="media of messages and answers (bytes; events carry references)",
        ),
    )


async def ensure_memory_bucket(js: JetStreamContext, cfg: NatsConfig, ttl: float) -> KeyValue:
    return await _bucket(
        js,
        KeyValueConfig(
            bucket=s.KV_MEMORY,
            history=1,
            ttl=ttl,
            storage=StorageType.FILE,
            replicas=cfg.replicas,
            description="conversation memory: recent turns and backend sessions",
        ),
    )


async def ensure_streams_bucket(js: JetStreamContext, cfg: NatsConfig) -> KeyValue:
    return await _bucket(
        js,
        KeyValueConfig(
            bucket=s.KV_STREAMS,
            history=1,
            ttl=3600.0,
            storage=StorageType.FILE,
            replicas=cfg.replicas,
            description="answer streams platforms poll (content so far, finish)",
        ),
    )


# A signed header pair (from a platform that signs a timestamp, not the body) is accepted for one hour
# either way at most: kept this long, it is never accepted twice with different bodies.
REPLAY_TTL_SECONDS = 2 * 3600.0


async def ensure_replay_bucket(js: JetStreamContext, cfg: NatsConfig) -> KeyValue:
    return await _bucket(
        js,
        KeyValueConfig(
            bucket=s.KV_REPLAY,
            history=1,
            ttl=REPLAY_TTL_SECONDS,
            storage=StorageType.FILE,
            replicas=cfg.replicas,
            description="callback signatures seen once (key: digest, value: body digest)",
        ),
    )


async def ensure_leases_bucket(js: JetStreamContext, cfg: NatsConfig) -> KeyValue:
    return await _bucket(
        js,
        KeyValueConfig(
            bucket=s.KV_LEASES,
            history=1,
            storage=StorageType.FILE,
            replicas=cfg.replicas,
            description="connector socket leases: one owner per bot",
        ),
    )


async def streams_present(js: JetStreamContext) -> bool:
    for name in (s.STREAM_IN, s.STREAM_OUT, s.STREAM_DLQ):
        try:
            await js.stream_info(name)
        except Exception:
            return False
    return True
