"""WeCom AI bot's ``response_url`` for the simulator: a proactive markdown answer to one message (45002 over
20,480 bytes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..wecom.sim_api import err

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

    return [Route("/cgi-bin/aibot/response", aibot_response, methods=["POST"])]
