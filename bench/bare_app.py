"""The baseline: a bare Starlette endpoint that reads the body and returns 200, served like the ingress."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def callback(request: Request) -> Response:
    await request.body()
    return Response(b"", media_type="text/plain")


app = Starlette(routes=[Route("/callback/{bot_id}", callback, methods=["GET", "POST"])])
