"""``imrelay-ingress`` / ``python -m imrelay_ingress``: the public callback server plus the admin port."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from imrelay.admin import serve_admin
from imrelay.config import load_settings
from imrelay.connlimits import ConnectionGuard
from imrelay.errors import ConfigError
from imrelay.redact import protect_settings
from imrelay.runtime import EmbeddedServer, service_main, stop_event

from .app import create_app
from .publisher import JetStreamPublisher

log = logging.getLogger("imrelay.ingress")


async def run() -> None:
    settings = load_settings()
    protect_settings(settings)
    publisher = JetStreamPublisher(settings.nats)
    await publisher.start()
    app = create_app(settings, publisher, streams=publisher.streams, replay=publisher.replay)
    limits = settings.ingress.connections.limits(max_body_bytes=settings.ingress.max_body_bytes)
    public = EmbeddedServer(
        uvicorn.Config(
            app,
            host=settings.ingress.host,
            port=settings.ingress.port,
            log_level="warning",
            access_log=False,
            proxy_headers=True,
            server_header=False,
            timeout_graceful_shutdown=10,
            **ConnectionGuard("public", limits).uvicorn_options(),
        )
    )
    admin = serve_admin(
        settings.admin.host, settings.admin.port, publisher.ready, connections=settings.admin.connections
    )
    stop = stop_event()

    async def refused() -> None:
        """Ends only if NATS refuses the credentials or TLS: the service then stops with the reason."""
        await publisher.connected()
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(public.serve()), asyncio.create_task(admin.serve())]
    watch = asyncio.create_task(refused())
    log.info(
        "ingress listening on :%d (admin :%d), %d bot(s)",
        settings.ingress.port,
        settings.admin.port,
        len(settings.bots),
    )
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, watch, *tasks], return_when=asyncio.FIRST_COMPLETED)
    public.should_exit = True
    admin.should_exit = True
    watch.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    waiter.cancel()
    await publisher.close()
    for t in [watch, *tasks]:
        if t in done and (exc := t.exception()):
            if isinstance(exc, ConfigError):
                raise exc
            raise SystemExit(f"server failed: {exc}")


def main() -> None:
    service_main("ingress", run)


if __name__ == "__main__":
    main()
