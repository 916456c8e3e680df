"""The admin port every service serves: ``/metrics``, ``/healthz`` (alive), ``/readyz`` (NATS up, streams
present). Metrics never appear on the public port."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .runtime import EmbeddedServer
from .telemetry import registry

ReadyCheck = Callable[[], Awaitable[bool]]

__all__ = ["admin_app", "serve_admin"]


def admin_app(ready: ReadyCheck) -> Starlette:
    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry()), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        try:
            ok = await asyncio.wait_for(ready(), timeout=2.0)
        except Exception:
            ok = False
        return PlainTextResponse("ready" if ok else "not ready", status_code=200 if ok else 503)

    return Starlette(routes=[
        Route("/metrics", metrics), Route("/healthz", healthz), Route("/readyz", readyz),
    ])


def serve_admin(host: str, port: int, ready: ReadyCheck) -> EmbeddedServer:
    """A uvicorn server for the admin app; run it with ``await server.serve()``."""
    config = uvicorn.Config(admin_app(ready), host=host, port=port, log_level="warning",
                            access_log=False, lifespan="off")
    return EmbeddedServer(config)
