"""``imrelay-sender`` / ``python -m imrelay_sender``: delivery to the platforms plus the admin port."""

from __future__ import annotations

import asyncio
import logging
import sys

import httpx
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from imrelay.admin import serve_admin
from imrelay.config import load_settings
from imrelay.errors import ConfigError
from imrelay.jetstream import connect_until_ready, ensure_buckets, streams_present
from imrelay.runtime import stop_event
from imrelay.telemetry import setup_logging, setup_tracing

from .app import build_sender

log = logging.getLogger("imrelay.sender")


async def run() -> None:
    settings = load_settings()
    stop = stop_event()
    nc, js = await connect_until_ready(settings.nats, "imrelay-sender-control")
    buckets = await ensure_buckets(js, settings.nats)
    client = httpx.AsyncClient(timeout=settings.sender.http_timeout_seconds)
    HTTPXClientInstrumentor().instrument_client(client)
    sender = build_sender(settings, buckets.deliveries, buckets.tokens, client)
    ready_flag = False

    async def ready() -> bool:
        return ready_flag and nc.is_connected and await streams_present(js)

    admin = serve_admin(settings.admin.host, settings.admin.port, ready)
    admin_task = asyncio.create_task(admin.serve())
    await sender.broker.start()
    ready_flag = True
    log.info("sender delivering for %d bot(s) (admin :%d)", len(sender.deliveries),
             settings.admin.port)
    await stop.wait()
    ready_flag = False
    await sender.broker.stop()
    await client.aclose()
    admin.should_exit = True
    await admin_task
    await nc.close()


def main() -> None:
    setup_logging("sender")
    setup_tracing("imrelay-sender")
    try:
        asyncio.run(run())
    except ConfigError as exc:
        print(f"imrelay-sender: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as exc:
        print(f"imrelay-sender: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
