"""``imrelay-worker`` / ``python -m imrelay_worker``: the LLM worker plus its admin port."""

from __future__ import annotations

import gc
import logging

from nats.js import JetStreamContext

from imrelay import subjects
from imrelay.broker import update_consumers
from imrelay.config import load_settings
from imrelay.delivery.claims import DeliveryClaims
from imrelay.jetstream import (
    connect_until_ready,
    ensure_deliveries_bucket,
    ensure_media_store,
    ensure_memory_bucket,
    ensure_tokens_bucket,
)
from imrelay.media.store import ObjectMediaStore
from imrelay.redact import protect_settings
from imrelay.runtime import Connected, run_until_stopped, service_main
from imrelay.telemetry import instrument_httpx

from .app import build_worker, media_step
from .memory import MemoryStore

log = logging.getLogger("imrelay.worker")


async def run() -> None:
    settings = load_settings()
    protect_settings(settings)
    worker = build_worker(settings)
    instrument_httpx(worker.client)

    control: list[JetStreamContext] = []  # the control connection's JetStream, once connected

    async def start() -> None:
        await update_consumers(control[-1], worker.broker)
        await worker.broker.start()
        # What exists now lives as long as the process: out of the collector's sight, a full collection
        # walks only what messages left behind (else a pause of tens of ms, in the middle of a stream).
        gc.freeze()
        log.info(
            "worker consuming (concurrency %d, admin :%d)", settings.worker.concurrency, settings.admin.port
        )

    async def stop() -> None:
        log.info("stopping: finishing in-flight answers")
        await worker.broker.stop()
        await worker.client.aclose()
        if worker.media is not None:
            await worker.media.direct.aclose()

    async def connect() -> Connected:
        nc, js = await connect_until_ready(settings.nats, "imrelay-worker-control")
        control.append(js)
        # A dead worker's claim is stale before its message comes back (one ack wait after its last
        # in-progress report), so the next worker answers it at once instead of looking again later.
        worker.answered = DeliveryClaims(
            await ensure_deliveries_bucket(js, settings.nats),
            stale_after=settings.worker.ack_wait_seconds * 2 / 3,
        )
        if settings.memory.enabled:
            kv = await ensure_memory_bucket(js, settings.nats, settings.memory.ttl_seconds)
            worker.memory = MemoryStore(kv, settings.memory)
        if settings.media.enabled:
            store = ObjectMediaStore(await ensure_media_store(js, settings.nats, settings.media.ttl_seconds))
            tokens = await ensure_tokens_bucket(js, settings.nats)
            worker.media = media_step(settings, worker.client, store, tokens)
        return Connected(nc, js, start, stop)

    await run_until_stopped(
        settings.admin, connect, consumers=(subjects.STREAM_IN, [subjects.CONSUMER_WORKER])
    )


def main() -> None:
    service_main("worker", run)


if __name__ == "__main__":
    main()
