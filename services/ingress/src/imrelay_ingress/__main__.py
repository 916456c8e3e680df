"""``imrelay-ingress`` / ``python -m imrelay_ingress``: the public callback server plus the admin port."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import uvicorn

from imrelay.admin import admin_app, serve_admin
from imrelay.config import load_settings
from imrelay.connlimits import ConnectionGuard
from imrelay.errors import ConfigError
from imrelay.redact import protect_settings
from imrelay.runtime import EmbeddedServer, service_main, stop_event

from .app import create_app
from .publisher import JetStreamPublisher
from .workers import WORKER_SOCKET_ENV, Workers, parent_gone, public_socket, worker_index

log = logging.getLogger("imrelay.ingress")


async def run() -> None:
    settings = load_settings()
    protect_settings(settings)
    count, index, parent = settings.ingress.workers, worker_index(), os.getppid()
    publisher = JetStreamPublisher(settings.nats)
    await publisher.start()
    app = create_app(
        settings, publisher, streams=publisher.streams, replay=publisher.replay, media=publisher.media
    )
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
    # Several processes: each binds the port itself (SO_REUSEPORT), the first one before it starts the
    # others, so a port in use stops the service at once.
    sockets = (
        [public_socket(settings.ingress.host, settings.ingress.port, reuse_port=True)] if count > 1 else None
    )
    workers: Workers | None = None
    run_dir: str | None = None
    if index:
        admin = EmbeddedServer(
            uvicorn.Config(
                admin_app(publisher.ready),
                uds=os.environ[WORKER_SOCKET_ENV],
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )
    else:
        not_ready: list[str] = []

        async def ready() -> bool:
            ok = await publisher.ready()
            not_ready[:] = await workers.not_ready() if workers is not None else []
            return ok

        if count > 1:
            run_dir = tempfile.mkdtemp(prefix="imrelay-ingress-")
            workers = Workers(count, Path(run_dir))
            workers.start()
        admin = serve_admin(
            settings.admin.host,
            settings.admin.port,
            ready,
            reasons=lambda: list(not_ready),
            connections=settings.admin.connections,
            exposition=workers.exposition if workers is not None else None,
        )
    stop = stop_event()

    async def refused() -> None:
        """Ends only if NATS refuses the credentials or TLS: the service then stops with the reason."""
        await publisher.connected()
        await asyncio.Event().wait()

    async def process_gone() -> str:
        """Ends when a process of this ingress is gone: one the first process started, or (in those) the
        first process itself; returns why the service stops (after draining, like on SIGTERM)."""
        if workers is not None:
            return f"ingress process {await workers.exited()} exited"
        if index:
            await parent_gone(parent)
            return "the first ingress process exited"
        await asyncio.Event().wait()
        return ""

    tasks = [asyncio.create_task(public.serve(sockets)), asyncio.create_task(admin.serve())]
    gone = asyncio.create_task(process_gone())
    watch: list[asyncio.Task[Any]] = [asyncio.create_task(refused()), gone]
    if not index:
        log.info(
            "ingress listening on :%d (admin :%d), %d bot(s)",
            settings.ingress.port,
            settings.admin.port,
            len(settings.bots),
        )
    # What exists now (modules, settings, the apps) lives as long as the process: out of the collector's
    # sight, a full collection walks only what requests left behind (else a pause of tens of ms).
    gc.freeze()
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *watch, *tasks], return_when=asyncio.FIRST_COMPLETED)
    public.should_exit = True
    admin.should_exit = True
    for w in watch:
        w.cancel()
    if workers is not None:
        await workers.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    waiter.cancel()
    await publisher.close()
    if run_dir is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
    for t in [*watch, *tasks]:
        if t in done and (exc := t.exception()):
            if isinstance(exc, ConfigError):
                raise exc
            raise SystemExit(f"server failed: {exc}")
    if gone in done:
        raise SystemExit(gone.result())


def main() -> None:
    service_main("ingress", run)


if __name__ == "__main__":
    main()
