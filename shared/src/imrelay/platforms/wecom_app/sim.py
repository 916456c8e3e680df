"""WeCom self-built app for the simulator: ``GET /cgi-bin/gettoken?corpid=&corpsecret=`` (a token valid
``token_lifetime`` seconds; 40013 bad corpid, 40001 bad secret; repeated calls within the lifetime return the
same token, like WeCom) and ``POST /cgi-bin/message/send?access_token=`` (40014 unknown token, 42001 expired
token, 45009 over the per-member limit of ``user_limit`` per ``user_window`` seconds, 81013 no receiver).

``trusted_ips`` (``/sim/control``: a list, or null for none) makes both answer 60020 to any other caller IP,
as WeCom does for an app whose trusted IPs (企业可信IP) do not include the caller. ``message/send`` honours
``enable_duplicate_check`` as WeCom does (an identical request within the interval is dropped with errcode
0); ``/sim/stats`` counts those as ``duplicates_suppressed``.

Media (see :mod:`imrelay.platforms.wecom.sim_media`): ``GET /cgi-bin/media/get?access_token&media_id``
serves users' files and the app's uploads (ranges; 830002 above 20 MB without one; 40007 for an unknown
or expired id), ``POST /cgi-bin/media/upload?access_token&type=image|voice|video|file`` keeps an upload,
and ``message/send`` of an image, voice, video or file takes a ``media_id`` this app uploaded in the last
three days (40007 otherwise), recorded with the file's ``media`` (its sha256).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..wecom import sim_media
from ..wecom.codes import WeComCode
from ..wecom.sim_api import err, injected_fault, window_ok
from .config import WeComAppBot

if TYPE_CHECKING:
    from imrelay_sim.server import SimState


def routes(state: SimState, clock: Callable[[], float]) -> list[BaseRoute]:
    for bot in state.settings.bots if state.settings else []:
        if isinstance(bot, WeComAppBot):
            c = bot.credentials
            state.secrets_by_corp.setdefault(c.corp_id, {})[c.secret.get_secret_value()] = c.agent_id
            state.bot_of_agent[(c.corp_id, c.agent_id)] = bot.id

    async def gettoken(request: Request) -> Response:
        state.stats["gettoken"] += 1
        state.gettoken_in_flight += 1
        state.stats["gettoken_peak_concurrency"] = max(
            state.stats["gettoken_peak_concurrency"], state.gettoken_in_flight
        )
        try:
            if state.gettoken_delay:
                await asyncio.sleep(state.gettoken_delay)
            if state.gettoken_fail_next:
                code = state.gettoken_fail_next.pop(0)
                state.stats["gettoken_faults"] += 1
                return Response("busy", status_code=code) if 500 <= code <= 599 else err(code, "fault")
            return issue_token(request)
        finally:
            state.gettoken_in_flight -= 1

    def untrusted(request: Request) -> Response | None:
        ip = request.client.host if request.client else ""
        if state.trusted_ips is None or ip in state.trusted_ips:
            return None
        return err(
            60020,
            f"not allow to access from your ip, hint: [sim], from ip: {ip}, more info at "
            "https://open.work.weixin.qq.com/devtool/query?e=60020",
        )

    def issue_token(request: Request) -> Response:
        if (refused := untrusted(request)) is not None:
            return refused
        corp = request.query_params.get("corpid", "")
        secret = request.query_params.get("corpsecret", "")
        if corp not in state.secrets_by_corp:
            return err(40013, "invalid corpid")
        agent = state.secrets_by_corp[corp].get(secret)
        if agent is None:
            return err(40001, "invalid credential")
        now = clock()
        key = (corp, agent)
        token = state.current.get(key)
        if token is None or state.tokens[token][2] <= now:
            token = secrets.token_urlsafe(48)
            state.tokens[token] = (corp, agent, now + state.token_lifetime)
            state.current[key] = token
            state.issued.append(token)
            state.stats["tokens_issued"] += 1
        expires_in = max(int(state.tokens[token][2] - now), 1)
        return JSONResponse({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": expires_in})

    def authorized(request: Request) -> tuple[str, str] | Response:
        """(corp, agent) of the request's access token, or WeCom's refusal."""
        if (refused := untrusted(request)) is not None:
            return refused
        info = state.tokens.get(request.query_params.get("access_token", ""))
        if info is None:
            return err(40014, "invalid access_token")
        corp, agent, expires = info
        if expires <= clock():
            return err(42001, "access_token expired")
        return corp, agent

    async def media_get(request: Request) -> Response:
        state.stats["media_get"] += 1
        who = authorized(request)
        if isinstance(who, Response):
            return who
        item = sim_media.readable(state, request.query_params.get("media_id", ""), clock())
        if item is None:
            return err(WeComCode.INVALID_MEDIA_ID, "invalid media_id")
        return sim_media.serve(state, request, item)

    async def media_upload(request: Request) -> Response:
        state.stats["media_upload"] += 1
        who = authorized(request)
        if isinstance(who, Response):
            await request.body()
            return who
        return await sim_media.take_upload(
            state, request, frozenset(sim_media.UPLOAD_RULES), "app:" + ":".join(who), clock
        )

    async def message_send(request: Request) -> Response:
        state.stats["message_send"] += 1
        raw = await request.body()  # always read: answering early breaks keep-alive connections
        token = request.query_params.get("access_token", "")
        info = state.tokens.get(token)
        now = clock()
        if (refused := untrusted(request)) is not None:
            return refused
        if info is None:
            return err(40014, "invalid access_token")
        corp, agent, expires = info
        if expires <= now:
            return err(42001, "access_token expired")
        fault = await injected_fault(state, clock, token)
        if fault is not None:
            return fault
        try:
            body = json.loads(raw)
        except ValueError:
            return err(44004, "invalid json")
        touser = str(body.get("touser", ""))
        if not touser or touser in state.invalid_users:
            return err(81013, "user & party & tag all invalid")
        if str(body.get("agentid")) != agent:
            return err(301002, "agentid mismatch with token")
        log = state.sends[("app", corp, agent, touser)]
        if not window_ok(log, state.user_limit, state.user_window, now):
            state.stats["rate_limited"] += 1
            return err(45009, "api freq out of limit")
        if body.get("enable_duplicate_check"):
            # WeCom drops a request identical to one sent within duplicate_check_interval, answering ok.
            fingerprint = json.dumps(body, sort_keys=True, ensure_ascii=False)
            interval = float(body.get("duplicate_check_interval", 1800))
            if now - state.seen.get(fingerprint, -1e18) < interval:
                state.stats["duplicates_suppressed"] += 1
                return JSONResponse({"errcode": 0, "errmsg": "ok", "invaliduser": ""})
            state.seen[fingerprint] = now
        msgtype = body.get("msgtype", "text")
        part = body.get(msgtype) or {}
        media: dict[str, object] = {}
        if msgtype in sim_media.UPLOAD_RULES:
            item = sim_media.uploaded(state, str(part.get("media_id", "")), f"app:{corp}:{agent}", now)
            if item is None:
                return err(WeComCode.INVALID_MEDIA_ID, "invalid media_id")
            media = {"content": f"[{msgtype} {item.name}]", "media": item.describe()}
        log.append(now)
        state.seq += 1
        state.stats["delivered"] += 1
        state.messages.append(
            {
                "seq": state.seq,
                "platform": "wecom_app",
                "bot": state.bot_of_agent.get((corp, agent), ""),
                "corp_id": corp,
                "agent_id": agent,
                "touser": touser,
                "msgtype": msgtype,
                "content": part.get("content", ""),
                "at": now,
                **media,
            }
        )
        return JSONResponse({"errcode": 0, "errmsg": "ok", "invaliduser": "", "msgid": f"sim{state.seq}"})

    return [
        Route("/cgi-bin/gettoken", gettoken, methods=["GET"]),
        Route("/cgi-bin/message/send", message_send, methods=["POST"]),
        Route("/cgi-bin/media/get", media_get, methods=["GET"]),
        Route("/cgi-bin/media/upload", media_upload, methods=["POST"]),
        *sim_media.pic_routes(state),
    ]
