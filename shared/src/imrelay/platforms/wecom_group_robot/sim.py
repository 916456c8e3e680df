"""WeCom group robot for the simulator: ``POST /cgi-bin/webhook/send?key=``, the group's webhook (limited
per key to ``webhook_limit`` per ``webhook_window`` seconds, 45009 beyond)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..wecom.sim_api import err, injected_fault, window_ok
from .config import WeComGroupRobotBot

if TYPE_CHECKING:
    from imrelay_sim.server import SimState


def routes(state: SimState, clock: Callable[[], float]) -> list[BaseRoute]:
    for bot in state.settings.bots if state.settings else []:
        if isinstance(bot, WeComGroupRobotBot):
            state.webhook_keys[bot.id] = bot.id

    async def webhook_send(request: Request) -> Response:
        state.stats["webhook_send"] += 1
        raw = await request.body()
        key = request.query_params.get("key", "")
        if not key:
            return err(93000, "invalid webhook url")
        fault = await injected_fault(state, clock)
        if fault is not None:
            return fault
        now = clock()
        log = state.sends[("webhook", key)]
        if not window_ok(log, state.webhook_limit, state.webhook_window, now):
            state.stats["rate_limited"] += 1
            return err(45009, "api freq out of limit")
        try:
            body = json.loads(raw)
        except ValueError:
            return err(40035, "invalid json")
        log.append(now)
        state.seq += 1
        msgtype = body.get("msgtype", "text")
        part = body.get(msgtype) or {}
        state.messages.append(
            {
                "seq": state.seq,
                "platform": "wecom_group_robot",
                "bot": state.webhook_keys.get(key, ""),
                "chat": key,
                "msgtype": msgtype,
                "content": part.get("content", ""),
                "mentioned_list": part.get("mentioned_list", []),
                "at": now,
            }
        )
        return JSONResponse({"errcode": 0, "errmsg": "ok"})

    return [Route("/cgi-bin/webhook/send", webhook_send, methods=["POST"])]
