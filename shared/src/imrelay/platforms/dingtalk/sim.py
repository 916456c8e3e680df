"""DingTalk for the simulator: session webhooks, ``/v1.0/oauth2/accessToken`` and the robot send API
(20 messages a minute per robot, 130101 beyond), and the signed robot callback the ingress receives."""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imrelay.platforms.dingtalk import crypto as dingtalk_crypto
from imrelay.platforms.dingtalk.config import DingTalkBot

if TYPE_CHECKING:
    from imrelay_sim.server import SimState


def callback(
    bot: DingTalkBot,
    text: str,
    user: str,
    conversation: str,
    group: bool,
    msg_id: str,
    now: float,
    sim_url: str,
    session_minutes: float = 90,
) -> tuple[dict[str, str], bytes]:
    c = bot.credentials
    now_ms = int(now * 1000)
    body = {
        "msgId": msg_id,
        "msgtype": "text",
        "text": {"content": (" " if group else "") + text},
        "conversationId": conversation,
        "conversationType": "2" if group else "1",
        "conversationTitle": "sim group" if group else "",
        "senderId": "$:LWCP:" + user,
        "senderStaffId": user,
        "senderNick": user,
        "chatbotUserId": "bot",
        "robotCode": c.expected_robot_code,
        "isInAtList": True,
        "createAt": now_ms,
        # opaque to the robot, as DingTalk's: who and where, and a random part
        "sessionWebhook": f"{sim_url}/robot/sendBySession?session={bot.id}.{conversation}."
        f"{secrets.token_hex(12)}",
        "sessionWebhookExpiredTime": now_ms + int(session_minutes * 60_000),
    }
    ts = str(now_ms)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "timestamp": ts,
        "sign": dingtalk_crypto.sign(ts, c.app_secret.get_secret_value()),
    }
    return headers, json.dumps(body, ensure_ascii=False).encode()


def routes(state: SimState, clock: Callable[[], float] = time.time) -> list[Route]:
    apps: dict[str, tuple[str, str]] = {}  # app_key -> (secret, bot id)
    for bot in state.settings.bots if state.settings else []:
        if isinstance(bot, DingTalkBot):
            apps[bot.credentials.app_key] = (bot.credentials.app_secret.get_secret_value(), bot.id)
    tokens: dict[str, tuple[str, float]] = {}
    sends: dict[str, deque[float]] = defaultdict(deque)

    def limited(robot: str) -> bool:
        log, now = sends[robot], clock()
        while log and log[0] <= now - state.webhook_window:
            log.popleft()
        if len(log) >= state.webhook_limit:
            state.stats["rate_limited"] += 1
            return True
        log.append(now)
        return False

    def text_of(body: dict[str, object]) -> str:
        md = body.get("markdown")
        if isinstance(md, dict):
            return str(md.get("text", ""))
        txt = body.get("text")
        return str(txt.get("content", "")) if isinstance(txt, dict) else ""

    async def session_send(request: Request) -> Response:
        state.stats["dingtalk_session"] += 1
        body = json.loads(await request.body() or b"{}")
        bot, _, rest = request.query_params.get("session", "").partition(".")
        conversation = rest.rpartition(".")[0] or rest
        if limited(bot):
            return JSONResponse({"errcode": 130101, "errmsg": "send too fast"})
        state.record(
            {
                "platform": "dingtalk",
                "bot": bot,
                "chat": conversation,
                "via": "session",
                "content": text_of(body),
                "at_users": (body.get("at") or {}).get("atUserIds", []),
            },
            clock(),
        )
        return JSONResponse({"errcode": 0, "errmsg": "ok"})

    async def token(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        app = apps.get(str(body.get("appKey")))
        if app is None or app[0] != body.get("appSecret"):
            return JSONResponse({"code": "invalidClientSecret", "message": "bad secret"}, status_code=400)
        tok = secrets.token_hex(16)
        tokens[tok] = (str(body["appKey"]), clock() + state.token_lifetime)
        state.issued.append(tok)
        return JSONResponse({"accessToken": tok, "expireIn": int(state.token_lifetime)})

    async def robot_send(request: Request) -> Response:
        state.stats["dingtalk_api"] += 1
        info = tokens.get(request.headers.get("x-acs-dingtalk-access-token", ""))
        if info is None or info[1] <= clock():
            return JSONResponse(
                {"code": "InvalidAuthentication", "message": "token invalid"}, status_code=401
            )
        body = json.loads(await request.body() or b"{}")
        bot = apps[info[0]][1]
        if limited(bot):
            return JSONResponse({"code": "Throttling", "message": "too fast"}, status_code=429)
        param = json.loads(body.get("msgParam") or "{}")
        chat = body.get("openConversationId") or ",".join(body.get("userIds") or [])
        state.record(
            {
                "platform": "dingtalk",
                "bot": bot,
                "chat": chat,
                "via": "api",
                "content": param.get("text", ""),
            },
            clock(),
        )
        return JSONResponse({"processQueryKey": f"q{state.seq}"})

    return [
        Route("/robot/sendBySession", session_send, methods=["POST"]),
        Route("/v1.0/oauth2/accessToken", token, methods=["POST"]),
        Route("/v1.0/robot/oToMessages/batchSend", robot_send, methods=["POST"]),
        Route("/v1.0/robot/groupMessages/send", robot_send, methods=["POST"]),
    ]
