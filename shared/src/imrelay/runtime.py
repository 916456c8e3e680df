"""Process plumbing shared by the services: signal-driven shutdown and a uvicorn server that leaves
signal handling to the service that embeds it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

import uvicorn

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext

    from .config import AdminConfig

__all__ = ["EmbeddedServer", "run_until_stopped", "service_main", "stop_event"]


class EmbeddedServer(uvicorn.Server):
    """uvicorn.Server without its own signal capture: the service decides when to stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def stop_event() -> asyncio.Event:
    """An event set on SIGINT or SIGTERM (call from inside the running loop)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, event.set)
    return event


def service_main(service: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The ``main()`` of every imrelay service: logging, tracing, then ``run``; a bad configuration exits 2
    with the message (the path of the bad key), never a traceback."""
    from .errors import ConfigError
    from .telemetry import setup_logging, setup_tracing

    setup_logging(service)
    setup_tracing(f"imrelay-{service}")
    try:
        asyncio.run(run())
    except (ConfigError, ValueError) as exc:
        from .redact import redact

        kind = "configuration error: " if isinstance(exc, ConfigError) else ""
        print(f"imrelay-{service}: {kind}{redact(str(exc))}", file=sys.stderr)
        raise SystemExit(2) from None


async def watch_consumers(js: JetStreamContext, stream: str, consumers: list[str],
                          interval: float = 5.0) -> None:
    """Export each consumer's backlog (``imrelay_consumer_*_messages``) every ``interval`` seconds."""
    from .telemetry import CONSUMER_ACK_PENDING, CONSUMER_PENDING

    while True:
        for name in consumers:
            with contextlib.suppress(Exception):  # not created yet, or NATS away: next round
                info = await js.consumer_info(stream, name)
                CONSUMER_PENDING.labels(consumer=name).set(info.num_pending or 0)
                CONSUMER_ACK_PENDING.labels(consumer=name).set(info.num_ack_pending or 0)
        await asyncio.sleep(interval)


async def run_until_stopped(admin: AdminConfig, nc: NATS, js: JetStreamContext,
                            start: Callable[[], Awaitable[None]],
                            stop: Callable[[], Awaitable[None]],
                            consumers: tuple[str, list[str]] | None = None,
                            reasons: Callable[[], list[str]] | None = None) -> None:
    """Serve the admin port, ``start`` the consumers, wait for SIGINT/SIGTERM, then ``stop`` them (which
    finishes in-flight work) before closing the admin port and the NATS connection. ``consumers`` (stream,
    names) are watched for the backlog metrics; ``reasons`` adds the service's own readiness reasons."""
    from .admin import serve_admin
    from .jetstream import streams_present

    stopping = stop_event()
    running = False

    async def ready() -> bool:
        return running and nc.is_connected and await streams_present(js)

    server = serve_admin(admin.host, admin.port, ready, reasons, admin.connections)
    server_task = asyncio.create_task(server.serve())
    watcher = asyncio.create_task(watch_consumers(js, *consumers)) if consumers else None
    try:
        await start()
        running = True
        waiter = asyncio.create_task(stopping.wait())
        await asyncio.wait({waiter, server_task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if server_task.done():  # e.g. the admin port is taken: do not run half-alive
            raise RuntimeError(f"the admin port :{admin.port} could not be served")
    finally:
        running = False
        if watcher is not None:
            watcher.cancel()
        await stop()
        server.should_exit = True
        await server_task
        await nc.close()
