"""``imrelay-worker`` / ``python -m imrelay_worker``: the LLM worker plus its admin port."""

from __future__ import annotations

import asyncio
import logging
import sys

from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from imrelay.admin import serve_admin
from imrelay.config import load_settings
from imrelay.errors import ConfigError
from imrelay.jetstream import connect_until_ready, streams_present
from imrelay.runtime import stop_event
from imrelay.telemetry import setup_logging, setup_tracing

from .app import build_worker

log = logging.getLogger("imrelay.worker")


async def run() -> None:
    settings = load_settings()
    worker = build_worker(settings)
    HTTPXClientInstrumentor().instrument_client(worker.client)
    stop = stop_event()
    ready_flag = False

    async def ready() -> bool:
        return ready_flag and nc.is_connected and await streams_present(js)

    nc, js = await connect_until_ready(settings.nats, "imrelay-worker-control")
    admin = serve_admin(settings.admin.host, settings.admin.port, ready)
    admin_task = asyncio.create_task(admin.serve())
    await worker.broker.start()
    ready_flag = True
    log.info("worker consuming (concurrency %d, admin :%d)", settings.worker.concurrency,
             settings.admin.port)
    await stop.wait()
    log.info("stopping: finishing in-flight answers")
    ready_flag = False
    await worker.broker.stop()
    await worker.client.aclose()
    admin.should_exit = True
    await admin_task
    await nc.close()


def main() -> None:
    setup_logging("worker")
    setup_tracing("imrelay-worker")
    try:
        asyncio.run(run())
    except ConfigError as exc:
        print(f"imrelay-worker: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as exc:
        print(f"imrelay-worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
