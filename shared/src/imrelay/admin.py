"""The admin port every service serves: ``/metrics``, ``/healthz`` (alive), ``/readyz`` (NATS up, streams
present, and whatever the service adds: each reason it gives is listed in the 503 answer). Metrics never
appear on the public port."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .config import AdminConfig, ConnectionLimitsConfig
from .connlimits import ConnectionGuard
from .runtime import EmbeddedServer
from .telemetry import registry

ReadyCheck = Callable[[], Awaitable[bool]]
Reasons = Callable[[], list[str]]  # why the service is not ready beyond NATS; empty when it is
Exposition = Callable[[], Awaitable[bytes]]  # the metrics to serve, when not only this process's

__all__ = ["admin_app", "serve_admin"]


def admin_app(
    ready: ReadyCheck, reasons: Reasons | None = None, exposition: Exposition | None = None
) -> Starlette:
    async def metrics(_: Request) -> Response:
        body = await exposition() if exposition is not None else generate_latest(registry())
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        try:
            ok = await asyncio.wait_for(ready(), timeout=2.0)
        except Exception:
            ok = False
        why = reasons() if reasons is not None else []
        if ok and not why:
            return PlainTextResponse("ready")
        return PlainTextResponse("; ".join(["not ready", *why]), status_code=503)

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ]
    )


def serve_admin(
    host: str,
    port: int,
    ready: ReadyCheck,
    reasons: Reasons | None = None,
    connections: ConnectionLimitsConfig | None = None,
    exposition: Exposition | None = None,
) -> EmbeddedServer:
    """A uvicorn server for the admin app, with the admin port's connection limits; run it with
    ``await server.serve()``."""
    limits = (connections or AdminConfig().connections).limits()
    config = uvicorn.Config(
        admin_app(ready, reasons, exposition),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        **ConnectionGuard("admin", limits).uvicorn_options(),
    )
    return EmbeddedServer(config)
