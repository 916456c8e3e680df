"""QQ bots for the simulator: ``/app/getAppAccessToken`` and the passive-reply endpoints (five replies
per message, a ``(msg_id, msg_seq)`` pair only once), and the Ed25519-signed dispatch the ingress receives."""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imrelay import ed25519
from imrelay.platforms.qq.config import QQBot
from imrelay.platforms.qq.keys import qq_seed

if TYPE_CHECKING:
    from imrelay_sim.server import SimState


def callback(
    bot: QQBot, text: str, user: str, group: str, msg_id: str, now: float
) -> tuple[dict[str, str], bytes]:
    """A ``GROUP_AT_MESSAGE_CREATE`` dispatch (``C2C_MESSAGE_CREATE`` when ``group`` is empty)."""
    if group:
        event, d = "GROUP_AT_MESSAGE_CREATE", {"group_openid": group, "author": {"member_openid": user}}
    else:
        event, d = "C2C_MESSAGE_CREATE", {"author": {"user_openid": user}}
    d.update(
        {
            "id": msg_id,
            "content": (" " if group else "") + text,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+08:00", time.localtime(now)),
        }
    )
    body = json.dumps(
        {"op": 0, "id": f"{event}:{secrets.token_hex(8)}", "d": d, "s": 1, "t": event}, ensure_ascii=False
    ).encode()
    ts = str(int(now))
    key = ed25519.signing_key(qq_seed(bot.credentials.app_secret.get_secret_value()))
    return {
        "Content-Type": "application/json",
        "User-Agent": "QQBot-Callback",
        "X-Bot-Appid": bot.credentials.app_id,
        "X-Signature-Method": "Ed25519",
        "X-Signature-Timestamp": ts,
        "X-Signature-Ed25519": ed25519.sign(key, ts.encode() + body),
    }, body


def routes(state: SimState, clock: Callable[[], float] = time.time) -> list[Route]:
    apps: dict[str, tuple[str, str]] = {}  # app id -> (secret, bot id)
    for bot in state.settings.bots if state.settings else []:
        if isinstance(bot, QQBot):
            apps[bot.credentials.app_id] = (bot.credentials.app_secret.get_secret_value(), bot.id)
    tokens: dict[str, tuple[str, float]] = {}
    replies: dict[str, set[int]] = defaultdict(set)

    async def token(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        app = apps.get(str(body.get("appId")))
        if app is None or app[0] != body.get("clientSecret"):
            return JSONResponse({"code": 100016, "message": "invalid appid or secret"}, status_code=400)
        tok = secrets.token_hex(16)
        tokens[tok] = (str(body["appId"]), clock() + state.token_lifetime)
        state.issued.append(tok)
        return JSONResponse({"access_token": tok, "expires_in": str(int(state.token_lifetime))})

    async def send(request: Request) -> Response:
        state.stats["qq_send"] += 1
        auth = request.headers.get("authorization", "").removeprefix("QQBot ")
        info = tokens.get(auth)
        if info is None or info[1] <= clock():
            return JSONResponse({"code": 11244, "message": "token not exist or expire"}, status_code=401)
        body = json.loads(await request.body() or b"{}")
        msg_id, seq = str(body.get("msg_id", "")), int(body.get("msg_seq", 1))
        if not msg_id:
            return JSONResponse(
                {"code": 304003, "message": "proactive messages are not allowed"}, status_code=400
            )
        if seq in replies[msg_id]:
            state.stats["duplicates_suppressed"] += 1
            return JSONResponse({"code": 40054005, "message": "msg_seq already used"}, status_code=400)
        if len(replies[msg_id]) >= 5:
            return JSONResponse({"code": 22009, "message": "msg limit exceed"}, status_code=400)
        replies[msg_id].add(seq)
        target = next(v for k, v in request.path_params.items())
        state.record(
            {
                "platform": "qq",
                "bot": apps[info[0]][1],
                "chat": target,
                "reply_to": msg_id,
                "msg_seq": seq,
                "content": body.get("content", ""),
            },
            clock(),
        )
        return JSONResponse({"id": f"qqmsg{state.seq}", "timestamp": int(clock())})

    return [
        Route("/app/getAppAccessToken", token, methods=["POST"]),
        Route("/v2/groups/{group}/messages", send, methods=["POST"]),
        Route("/v2/users/{user}/messages", send, methods=["POST"]),
        Route("/channels/{channel}/messages", send, methods=["POST"]),
        Route("/dms/{guild}/messages", send, methods=["POST"]),
    ]
