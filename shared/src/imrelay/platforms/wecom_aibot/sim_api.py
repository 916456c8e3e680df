"""WeCom AI bot's ``response_url`` for the simulator: a proactive markdown answer to one message (45002 over
20,480 bytes); and the URLs of the encrypted files messages point to (``/sim/aibot/media/<id>``: the
user's file AES-256-CBC encrypted with the message's key, refused once expired; ``aibot_media_served`` in
``/sim/stats`` counts the bytes sent, so a test sees a download stopped early)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ...media.simstore import get
from ..wecom.sim_api import err
from .media import encrypt_file
from .sim import media_key

PIECE = 64 * 1024

if TYPE_CHECKING:
    from imrelay_sim.server import SimState


def routes(state: SimState, clock: Callable[[], float]) -> list[BaseRoute]:
    async def aibot_response(request: Request) -> Response:
        """The AI bot's response_url: a proactive markdown answer to one message."""
        body = json.loads(await request.body() or b"{}")
        content = str((body.get("markdown") or {}).get("content", ""))
        if len(content.encode()) > 20480:
            return err(45002, "content size out of limit")
        state.record(
            {
                "platform": "wecom_aibot",
                "via": "response_url",
                "chat": request.query_params.get("response_code", ""),
                "content": content,
            },
            clock(),
        )
        return JSONResponse({"errcode": 0, "errmsg": "ok"})

    async def media(request: Request) -> Response:
        """A message's encrypted file."""
        q = request.query_params
        item = get(state, request.path_params["id"])
        nonce, expires = q.get("nonce", ""), q.get("expires", "")
        if item is None or not nonce or not expires.isdigit():
            return JSONResponse({"errcode": 404, "errmsg": "file not found"}, status_code=404)
        if clock() > int(expires):
            return JSONResponse({"errcode": 403, "errmsg": "url expired"}, status_code=403)
        data = encrypt_file(item.data, media_key(item.id, nonce))

        async def body() -> AsyncIterator[bytes]:
            for i in range(0, len(data), PIECE):
                if await request.is_disconnected():  # the reader stopped: so do we
                    return
                state.stats["aibot_media_served"] += len(data[i : i + PIECE])
                yield data[i : i + PIECE]

        return StreamingResponse(
            body(),
            media_type="application/octet-stream",
            headers={
                "content-length": str(len(data)),
                "content-disposition": f'attachment; filename="{item.name}"',
            },
        )

    return [
        Route("/cgi-bin/aibot/response", aibot_response, methods=["POST"]),
        Route("/sim/aibot/media/{id}", media, methods=["GET"]),
    ]
