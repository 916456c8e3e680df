"""Process plumbing shared by the services: signal-driven shutdown and a uvicorn server that leaves
signal handling to the service that embeds it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn

from .errors import ServiceError

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext

    from .config import AdminConfig

__all__ = ["Connected", "EmbeddedServer", "run_until_stopped", "service_main", "service_parser", "stop_event"]

log = logging.getLogger("imrelay.runtime")

SERVICES = {
    "ingress": "The public callback server: verifies and decrypts platform callbacks, stores them in NATS "
    "JetStream and answers the platform once they are stored.",
    "worker": "The llm-worker: consumes stored messages, calls each bot's model and streams the answer "
    "back into JetStream.",
    "sender": "Delivery to the platforms: access tokens, rate limits, splitting, retries, dead letters.",
    "connector": "Holds the long connections (bots with mode: long_connection), one owner per bot where "
    "the platform asks, and stores what arrives on them in JetStream.",
}

ENVIRONMENT_HELP = """\
environment:
  IMRELAY_CONFIG              config file (default ./imrelay.yaml; --config overrides it)
  IMRELAY_NATS_URL            overrides nats.url (one URL or several, comma-separated)
  IMRELAY_PORT                overrides ingress.port (the ingress's public port)
  IMRELAY_ADMIN_PORT          overrides admin.port (/metrics, /healthz, /readyz)
  IMRELAY_LOG_LEVEL           DEBUG, INFO (default), WARNING or ERROR
  IMRELAY_LOG_FORMAT          text (default) or json (one object a line, with trace_id and span_id)
  OTEL_EXPORTER_OTLP_ENDPOINT send traces over OTLP/HTTP (the standard OTEL_* variables apply)

Configuration reference: docs/configuration.md; problems: docs/troubleshooting.md."""


def version() -> str:
    from . import __version__

    return __version__


def service_parser(service: str) -> argparse.ArgumentParser:
    """The command line every service shares: ``--help``, ``--version`` and ``--config``."""
    p = argparse.ArgumentParser(
        prog=f"imrelay-{service}",
        description=SERVICES.get(service),
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"imrelay-{service} {version()}")
    p.add_argument(
        "--config", metavar="PATH", help="the config file (default: $IMRELAY_CONFIG or ./imrelay.yaml)"
    )
    return p


class EmbeddedServer(uvicorn.Server):
    """uvicorn.Server without its own signal capture: the service decides when to stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


_stop_requested: float | None = None  # monotonic time of the first SIGINT/SIGTERM


def stop_event() -> asyncio.Event:
    """An event set on SIGINT or SIGTERM (call from inside the running loop). The signal is logged: the
    service then drains its in-flight work, and :func:`service_main` logs how long that took."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        global _stop_requested
        if _stop_requested is None:
            _stop_requested = time.monotonic()
            log.info("%s received: draining in-flight work, then stopping", sig.name)
        event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    return event


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (it comes with ``uvicorn[standard]``; about a third less CPU
    per message than the default loop), else None: asyncio's own. ``IMRELAY_EVENT_LOOP=asyncio`` keeps
    asyncio's."""
    if os.environ.get("IMRELAY_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def service_main(
    service: str, run: Callable[[], Coroutine[Any, Any, None]], argv: list[str] | None = None
) -> None:
    """The ``main()`` of every imrelay service: the command line (``--help``, ``--version``,
    ``--config``), logging, tracing, a start line, then ``run``; a bad configuration exits 2 with the
    message (the path of the bad key), never a traceback."""
    from .config import DEFAULT_CONFIG_PATH, load_settings
    from .errors import ConfigError
    from .natslog import redact_url
    from .telemetry import setup_logging, setup_tracing, start_series

    args = service_parser(service).parse_args(sys.argv[1:] if argv is None else argv)
    if args.config:
        os.environ["IMRELAY_CONFIG"] = args.config
    setup_logging(service)
    setup_tracing(f"imrelay-{service}")
    try:
        config = os.environ.get("IMRELAY_CONFIG") or DEFAULT_CONFIG_PATH
        settings = load_settings(config)
        start_series(service, settings)
        log.info(
            "imrelay-%s %s starting: config %s, NATS %s",
            service,
            version(),
            os.path.abspath(config),
            ", ".join(redact_url(u) for u in settings.nats.servers),
        )
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(run())
    except (ConfigError, ValueError) as exc:
        from .redact import redact

        kind = "configuration error: " if isinstance(exc, ConfigError) else ""
        print(f"imrelay-{service}: {kind}{redact(str(exc))}", file=sys.stderr)
        raise SystemExit(2) from None
    if _stop_requested is not None:
        log.info(
            "imrelay-%s stopped: drained in-flight work in %.2fs", service, time.monotonic() - _stop_requested
        )


async def watch_consumers(
    js: JetStreamContext, stream: str, consumers: list[str], interval: float = 5.0
) -> None:
    """Export each consumer's backlog (``imrelay_consumer_*_messages``) every ``interval`` seconds."""
    from .telemetry import CONSUMER_ACK_PENDING, CONSUMER_PENDING

    while True:
        for name in consumers:
            with contextlib.suppress(Exception):  # not created yet, or NATS away: next round
                info = await js.consumer_info(stream, name)
                CONSUMER_PENDING.labels(consumer=name).set(info.num_pending or 0)
                CONSUMER_ACK_PENDING.labels(consumer=name).set(info.num_ack_pending or 0)
        await asyncio.sleep(interval)


@dataclass
class Connected:
    """What a service has once NATS answered and its streams and buckets are set up: the connection, and
    how to start and stop its work."""

    nc: NATS
    js: JetStreamContext
    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]


WAITING_FOR_NATS = "waiting for NATS (connecting, setting up the streams)"


async def run_until_stopped(
    admin: AdminConfig,
    connect: Callable[[], Coroutine[Any, Any, Connected]],
    consumers: tuple[str, list[str]] | None = None,
    reasons: Callable[[], list[str]] | None = None,
) -> None:
    """Serve the admin port at once (``/healthz`` answers while NATS is still away; ``/readyz`` says 503
    until it is up), then ``connect`` (retrying until NATS answers), ``start`` the consumers, wait for
    SIGINT/SIGTERM, then ``stop`` them (which finishes in-flight work) before closing the admin port and
    the NATS connection. A signal while still connecting stops the service at once. ``consumers``
    (stream, names) are watched for the backlog metrics; ``reasons`` adds the service's own readiness
    reasons."""
    from .admin import serve_admin
    from .jetstream import streams_present

    stopping = stop_event()
    running = False
    service: Connected | None = None

    async def ready() -> bool:
        return (
            running and service is not None and service.nc.is_connected and await streams_present(service.js)
        )

    def why() -> list[str]:
        own = reasons() if reasons is not None else []
        return own if service is not None else [WAITING_FOR_NATS, *own]

    server = serve_admin(admin.host, admin.port, ready, why, admin.connections)
    server_task = asyncio.create_task(server.serve())
    waiter = asyncio.create_task(stopping.wait())
    connecting = asyncio.create_task(connect())
    watcher: asyncio.Task[None] | None = None
    started = False
    try:
        await asyncio.wait({waiter, server_task, connecting}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():  # stopped (or the admin port failed) before NATS answered
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
        else:
            service = connecting.result()  # raises what made connecting fail (e.g. NATS refused us)
            if consumers:
                watcher = asyncio.create_task(watch_consumers(service.js, *consumers))
            if not waiter.done() and not server_task.done():
                started = True
                await service.start()
                running = True
                await asyncio.wait({waiter, server_task}, return_when=asyncio.FIRST_COMPLETED)
        if server_task.done() and not waiter.done():  # e.g. the admin port is taken: do not run half-alive
            raise ServiceError(f"the admin port :{admin.port} could not be served")
    finally:
        running = False
        waiter.cancel()
        if watcher is not None:
            watcher.cancel()
        if service is not None and started:
            await service.stop()
        server.should_exit = True
        await server_task
        if service is not None:
            await service.nc.close()
