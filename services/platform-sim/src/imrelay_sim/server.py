"""The simulator's HTTP server: plays the WeCom APIs the sender calls, with WeCom's error codes.

* ``GET /cgi-bin/gettoken?corpid=&corpsecret=`` -> a token valid ``token_lifetime`` seconds (40013 bad
  corpid, 40001 bad secret). Repeated calls within the lifetime return the same token, like WeCom.
* ``POST /cgi-bin/message/send?access_token=`` -> 40014 unknown token, 42001 expired token, 45009 over the
  per-member limit (``user_limit`` per ``user_window`` seconds per app and member), 81013 no receiver.
* ``POST /cgi-bin/webhook/send?key=`` -> the group-robot webhook (limit per key per window).
* ``POST /v1/chat/completions``: a streaming OpenAI-compatible model (see :mod:`imrelay_sim.llm`).
* ``GET /sim/messages`` lists what was delivered (filters: ``bot``, ``touser``, ``chat``);
  ``DELETE /sim/messages`` clears it; ``GET /sim/stats`` counts calls; ``GET /sim/tokens`` lists the
  access tokens every platform handed out; ``POST /sim/control`` changes limits and lifetimes, expires
  every token, or injects faults: ``fail_next`` (errcodes / HTTP statuses /
  "timeout" for the next send calls), ``fault_rate`` + ``fault_kinds`` (a random share of send calls),
  ``send_delay`` (slow answers), ``invalid_users`` (81013). A fault is answered before anything is recorded.
  ``trusted_ips`` (a list, or null for none) makes ``gettoken`` and ``message/send`` answer 60020 to any
  other caller IP, as WeCom does for an app whose trusted IPs (企业可信IP) do not include the caller.
* ``message/send`` honours ``enable_duplicate_check`` as WeCom does (an identical request within the
  interval is dropped with errcode 0); ``/sim/stats`` counts those as ``duplicates_suppressed``.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imrelay import platforms
from imrelay.config import Settings
from imrelay.platforms.wecom_app.config import WeComAppBot
from imrelay.platforms.wecom_group_robot.config import WeComGroupRobotBot

from .llm import routes as llm_routes


@dataclass
class SimState:
    token_lifetime: float = 7200.0
    user_limit: int = 30
    user_window: float = 60.0
    webhook_limit: int = 20
    webhook_window: float = 60.0
    apps: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # corpid:agent -> (...)
    secrets_by_corp: dict[str, dict[str, str]] = field(default_factory=dict)  # corp -> secret->agent
    tokens: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # token -> corp, agent, exp
    issued: list[str] = field(default_factory=list)  # every access token any platform handed out
    current: dict[tuple[str, str], str] = field(default_factory=dict)
    bot_of_agent: dict[tuple[str, str], str] = field(default_factory=dict)
    webhook_keys: dict[str, str] = field(default_factory=dict)  # key -> bot id
    messages: list[dict[str, Any]] = field(default_factory=list)
    sends: dict[tuple[str, ...], deque[float]] = field(default_factory=lambda: defaultdict(deque))
    fail_next: list[int] = field(default_factory=list)
    gettoken_fail_next: list[int] = field(default_factory=list)
    gettoken_delay: float = 0.0
    gettoken_in_flight: int = 0
    fault_rate: float = 0.0  # share of send calls answered with a random transient fault
    fault_kinds: list[str] = field(default_factory=lambda: ["502", "timeout", "45009", "42001", "-1"])
    timeout_delay: float = 5.0  # a "timeout" fault answers this late, having done nothing
    send_delay: float = 0.0  # every send call answers this late
    invalid_users: set[str] = field(default_factory=set)  # message/send answers 81013 for these
    trusted_ips: set[str] | None = None  # None: every caller IP is trusted
    seen: dict[str, float] = field(default_factory=dict)  # WeCom duplicate check: request -> time
    rng: random.Random = field(default_factory=lambda: random.Random(1))  # noqa: S311
    settings: Settings | None = None

    def record(self, entry: dict[str, Any], now: float) -> None:
        self.seq += 1
        self.stats["delivered"] += 1
        self.messages.append({"seq": self.seq, "at": now, **entry})
    stats: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seq: int = 0

    @classmethod
    def from_settings(cls, settings: Settings | None) -> SimState:
        state = cls(settings=settings)
        for bot in settings.bots if settings else []:
            if isinstance(bot, WeComAppBot):
                c = bot.credentials
                state.secrets_by_corp.setdefault(c.corp_id, {})[c.secret.get_secret_value()] = (
                    c.agent_id)
                state.bot_of_agent[(c.corp_id, c.agent_id)] = bot.id
            elif isinstance(bot, WeComGroupRobotBot):
                state.webhook_keys[bot.id] = bot.id
        return state


def _window_ok(log: deque[float], limit: int, window: float, now: float) -> bool:
    while log and log[0] <= now - window:
        log.popleft()
    return len(log) < limit


def create_app(settings: Settings | None = None, *, clock: Callable[[], float] = time.time,
               token_lifetime: float = 7200.0, user_limit: int = 30) -> Starlette:
    state = SimState.from_settings(settings)
    state.token_lifetime, state.user_limit = token_lifetime, user_limit

    def err(code: int, msg: str, status: int = 200) -> JSONResponse:
        return JSONResponse({"errcode": code, "errmsg": msg}, status_code=status)

    async def gettoken(request: Request) -> Response:
        state.stats["gettoken"] += 1
        state.gettoken_in_flight += 1
        state.stats["gettoken_peak_concurrency"] = max(state.stats["gettoken_peak_concurrency"],
                                                       state.gettoken_in_flight)
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
        return err(60020, f"not allow to access from your ip, hint: [sim], from ip: {ip}, more info at "
                          "https://open.work.weixin.qq.com/devtool/query?e=60020")

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
        return JSONResponse({"errcode": 0, "errmsg": "ok", "access_token": token,
                             "expires_in": expires_in})

    async def injected_fault(token: str | None = None) -> Response | None:
        """The next queued fault (``fail_next``), else a random one at ``fault_rate``. A fault is answered
        before anything is recorded: the platform did not act on the request."""
        if state.send_delay:
            await asyncio.sleep(state.send_delay)
        if state.fail_next:
            kind = str(state.fail_next.pop(0))
        elif state.fault_rate and state.rng.random() < state.fault_rate:
            kind = state.rng.choice(state.fault_kinds)
        else:
            return None
        state.stats["faults_injected"] += 1
        state.stats[f"fault_{kind}"] += 1
        if kind == "timeout":
            await asyncio.sleep(state.timeout_delay)
            return Response("gateway timeout", status_code=504)
        code = int(kind)
        if 500 <= code <= 599:  # an HTTP status; anything else is a WeCom errcode
            return Response("busy", status_code=code)
        if code == 42001 and token in state.tokens:  # the token expires at this very moment
            corp, agent, _ = state.tokens[token]
            state.tokens[token] = (corp, agent, clock() - 1)
        return err(code, "injected fault")

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
        fault = await injected_fault(token)
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
        if not _window_ok(log, state.user_limit, state.user_window, now):
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
        log.append(now)
        state.seq += 1
        state.stats["delivered"] += 1
        msgtype = body.get("msgtype", "text")
        state.messages.append({
            "seq": state.seq, "platform": "wecom_app",
            "bot": state.bot_of_agent.get((corp, agent), ""), "corp_id": corp, "agent_id": agent,
            "touser": touser, "msgtype": msgtype,
            "content": (body.get(msgtype) or {}).get("content", ""), "at": now,
        })
        return JSONResponse({"errcode": 0, "errmsg": "ok", "invaliduser": "",
                             "msgid": f"sim{state.seq}"})

    async def webhook_send(request: Request) -> Response:
        state.stats["webhook_send"] += 1
        raw = await request.body()
        key = request.query_params.get("key", "")
        if not key:
            return err(93000, "invalid webhook url")
        fault = await injected_fault()
        if fault is not None:
            return fault
        now = clock()
        log = state.sends[("webhook", key)]
        if not _window_ok(log, state.webhook_limit, state.webhook_window, now):
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
        state.messages.append({
            "seq": state.seq, "platform": "wecom_group_robot", "bot": state.webhook_keys.get(key, ""),
            "chat": key, "msgtype": msgtype, "content": part.get("content", ""),
            "mentioned_list": part.get("mentioned_list", []), "at": now,
        })
        return JSONResponse({"errcode": 0, "errmsg": "ok"})

    async def aibot_response(request: Request) -> Response:
        """The AI bot's response_url: a proactive markdown answer to one message."""
        body = json.loads(await request.body() or b"{}")
        content = str((body.get("markdown") or {}).get("content", ""))
        if len(content.encode()) > 20480:
            return err(45002, "content size out of limit")
        state.record({"platform": "wecom_aibot", "via": "response_url",
                      "chat": request.query_params.get("response_code", ""), "content": content}, clock())
        return JSONResponse({"errcode": 0, "errmsg": "ok"})

    async def list_messages(request: Request) -> Response:
        q = request.query_params
        out = [m for m in state.messages
               if all(str(m.get(k, "")) == q[k] for k in ("bot", "touser", "chat", "token", "reply_to",
                                                          "platform") if k in q)]
        return JSONResponse(out)

    async def clear_messages(_: Request) -> Response:
        state.messages.clear()
        return Response(status_code=204)

    async def stats(_: Request) -> Response:
        return JSONResponse(dict(state.stats))

    async def issued(_: Request) -> Response:
        return JSONResponse(state.issued)

    async def control(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "invalid json"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "expected an object"}, status_code=400)
        for name in ("token_lifetime", "user_limit", "user_window", "webhook_limit",
                     "webhook_window", "gettoken_delay", "fault_rate", "timeout_delay", "send_delay"):
            if name in body:
                setattr(state, name, type(getattr(state, name))(body[name]))
        if "gettoken_fail_next" in body:
            state.gettoken_fail_next = [int(c) for c in body["gettoken_fail_next"]]
        if "fault_kinds" in body:
            state.fault_kinds = [str(k) for k in body["fault_kinds"]]
        if "invalid_users" in body:
            state.invalid_users = {str(u) for u in body["invalid_users"]}
        if "trusted_ips" in body:
            ips = body["trusted_ips"]
            state.trusted_ips = None if ips is None else {str(ip) for ip in ips}
        if "seed" in body:
            state.rng.seed(int(body["seed"]))
        if body.get("expire_tokens"):
            for token, (corp, agent, _) in list(state.tokens.items()):
                state.tokens[token] = (corp, agent, clock() - 1)
        if "fail_next" in body:
            state.fail_next = [int(c) for c in body["fail_next"]]
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/cgi-bin/gettoken", gettoken, methods=["GET"]),
        Route("/cgi-bin/message/send", message_send, methods=["POST"]),
        Route("/cgi-bin/webhook/send", webhook_send, methods=["POST"]),
        Route("/cgi-bin/aibot/response", aibot_response, methods=["POST"]),
        Route("/sim/messages", list_messages, methods=["GET"]),
        Route("/sim/messages", clear_messages, methods=["DELETE"]),
        Route("/sim/stats", stats, methods=["GET"]),
        Route("/sim/tokens", issued, methods=["GET"]),
        Route("/sim/control", control, methods=["POST"]),
        *llm_routes(),
        *(route for spec in platforms.SPECS if spec.sim_routes for route in spec.sim_routes(state, clock)),
    ])
