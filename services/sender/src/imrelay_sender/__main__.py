"""``imrelay-sender`` / ``python -m imrelay_sender``: delivery to the platforms plus the admin port."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

from imrelay import subjects
from imrelay.answer_streams import KVStreamStore
from imrelay.broker import update_consumers
from imrelay.config import load_settings
from imrelay.events import ConnectionAnswer, ConnectionRequest
from imrelay.httpclient import async_client
from imrelay.jetstream import connect_until_ready, ensure_buckets, ensure_media_store, ensure_streams_bucket
from imrelay.media.store import ObjectMediaStore
from imrelay.redact import protect_settings
from imrelay.runtime import Connected, run_until_stopped, service_main
from imrelay.telemetry import instrument_httpx

from .app import build_sender

log = logging.getLogger("imrelay.sender")


async def run() -> None:
    settings = load_settings()
    protect_settings(settings)

    async def connect() -> Connected:
        nc, js = await connect_until_ready(settings.nats, "imrelay-sender-control")
        buckets = await ensure_buckets(js, settings.nats)
        client = async_client(timeout=settings.sender.http_timeout_seconds)
        instrument_httpx(client)

        async def request(req: ConnectionRequest) -> ConnectionAnswer:
            """Ask the connector holding the bot's long connection (its queue group) to send on it."""
            msg = await nc.request(
                subjects.connector_subject(req.platform, req.bot_id),
                req.model_dump_json().encode(),
                timeout=req.timeout_seconds or settings.sender.http_timeout_seconds,
            )
            return ConnectionAnswer.model_validate_json(msg.data)

        media = (
            ObjectMediaStore(await ensure_media_store(js, settings.nats, settings.media.ttl_seconds))
            if settings.media.enabled
            else None
        )
        sender = build_sender(
            settings,
            buckets,
            client,
            KVStreamStore(await ensure_streams_bucket(js, settings.nats)),
            request,
            media,
        )

        watch: asyncio.Task[None] | None = None

        async def start() -> None:
            nonlocal watch
            if sender.tokens is not None:
                watch = asyncio.create_task(sender.tokens.watch())
            await update_consumers(js, sender.broker)
            await sender.broker.start()
            # What exists now lives as long as the process: out of the collector's sight, a full collection
            # walks only what messages left behind (else a pause of tens of ms, in the middle of a stream).
            gc.freeze()
            log.info(
                "sender delivering for %d bot(s) over %d partitions (admin :%d)",
                len(sender.deliveries),
                settings.nats.out_partitions,
                settings.admin.port,
            )

        async def stop() -> None:
            await sender.broker.stop()
            await sender.drain()
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            await client.aclose()

        return Connected(nc, js, start, stop)

    await run_until_stopped(
        settings.admin,
        connect,
        consumers=(
            subjects.STREAM_OUT,
            [subjects.sender_consumer(k) for k in range(settings.nats.out_partitions)],
        ),
    )


def main() -> None:
    service_main("sender", run)


if __name__ == "__main__":
    main()
