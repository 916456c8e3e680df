"""WeCom group robot for the simulator: ``POST /cgi-bin/webhook/send?key=``, the group's webhook (limited
per key to ``webhook_limit`` per ``webhook_window`` seconds, 45009 beyond).

Media (see :mod:`imrelay.platforms.wecom.sim_media`): an ``image`` message's ``base64`` must decode, be a
JPG/PNG (40005) of at most 2 MB (40009) whose md5 is the one given (301019, the simulator's code);
``POST /cgi-bin/webhook/upload_media?key&type=file|voice`` keeps an upload (file 20 MB, voice 2 MB AMR;
93000 for an unknown key); a ``file`` or ``voice`` message takes a ``media_id`` this robot uploaded in
the last three days (40007 otherwise). Media messages are recorded with the file's ``media`` (its sha256).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from imrelay.media.sniff import sniff

from ..wecom import sim_media
from ..wecom.codes import WeComCode
from ..wecom.sim_api import err, injected_fault, window_ok
from .config import WeComGroupRobotBot

if TYPE_CHECKING:
    from imrelay_sim.server import SimState


def routes(state: SimState, clock: Callable[[], float]) -> list[BaseRoute]:
    for bot in state.settings.bots if state.settings else []:
        if isinstance(bot, WeComGroupRobotBot):
            state.webhook_keys[bot.id] = bot.id

    def media_of(key: str, msgtype: str, part: dict[str, Any], now: float) -> dict[str, Any] | Response:
        """A media message's file (kept, for its sha256), or WeCom's refusal."""
        if msgtype == "image":
            try:
                data = base64.b64decode(str(part.get("base64", "")), validate=True)
            except (binascii.Error, ValueError):
                return err(40035, "invalid base64")
            if len(data) > sim_media.ROBOT_IMAGE_LIMIT:
                return err(WeComCode.INVALID_IMAGE_SIZE, "image size exceeds 2M")
            if not data or hashlib.md5(data).hexdigest() != str(part.get("md5", "")).lower():  # noqa: S324
                return err(301019, "md5 not match")
            if sniff(data) not in ("image/png", "image/jpeg"):
                return err(WeComCode.INVALID_FILE_TYPE, "only jpg and png images")
            item = sim_media.keep_image(state, data)
        elif msgtype in ("file", "voice"):
            found = sim_media.uploaded(state, str(part.get("media_id", "")), f"robot:{key}", now)
            if found is None:
                return err(WeComCode.INVALID_MEDIA_ID, "invalid media_id")
            item = found
        else:
            return {}
        return {"content": f"[{msgtype} {item.name}]", "media": item.describe()}

    async def upload_media(request: Request) -> Response:
        state.stats["webhook_upload_media"] += 1
        key = request.query_params.get("key", "")
        if not key or key not in state.webhook_keys:
            await request.body()
            return err(93000, "invalid webhook url")
        kinds = frozenset({"file", "voice"})
        return await sim_media.take_upload(state, request, kinds, f"robot:{key}", clock)

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
        msgtype = body.get("msgtype", "text")
        part = body.get(msgtype) or {}
        media = media_of(key, msgtype, part, now)
        if isinstance(media, Response):
            return media
        log.append(now)
        state.seq += 1
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
                **media,
            }
        )
        return JSONResponse({"errcode": 0, "errmsg": "ok"})

    return [
        Route("/cgi-bin/webhook/send", webhook_send, methods=["POST"]),
        Route("/cgi-bin/webhook/upload_media", upload_media, methods=["POST"]),
        *sim_media.pic_routes(state),
    ]
