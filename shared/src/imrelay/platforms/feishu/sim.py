"""Feishu / Lark for the simulator: ``tenant_access_token`` and the message reply API (with its ``uuid``
de-duplication), and the signed, encrypted event callback the ingress receives."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imrelay.platforms.feishu import crypto as feishu_crypto
from imrelay.platforms.feishu.config import FeishuBot

if TYPE_CHECKING:
    from imrelay_sim.server import SimState


def event_json(
    bot: FeishuBot,
    text: str,
    user: str,
    chat_id: str,
    chat_type: str,
    event_id: str,
    message_id: str,
    now: float,
) -> dict[str, Any]:
    """An ``im.message.receive_v1`` event (schema 2.0), as Feishu sends it on either channel."""
    c = bot.credentials
    mentions = []
    if chat_type == "group":
        text = f"@_user_1 {text}"
        mentions = [{"key": "@_user_1", "id": {"open_id": "ou_bot"}, "name": bot.id, "tenant_key": "t"}]
    event: dict[str, Any] = {
        "schema": "2.0",
        "header": {
            "event_id": event_id,
            "token": c.verification_token.get_secret_value(),
            "create_time": str(int(now * 1000)),
            "event_type": "im.message.receive_v1",
            "tenant_key": "tenant",
            "app_id": c.app_id,
        },
        "event": {
            "sender": {
                "sender_id": {"open_id": user, "user_id": user, "union_id": "on_" + user},
                "sender_type": "user",
                "tenant_key": "tenant",
            },
            "message": {
                "message_id": message_id,
                "create_time": str(int(now * 1000)),
                "chat_id": chat_id,
                "chat_type": chat_type,
                "message_type": "text",
                "content": json.dumps({"text": text}, ensure_ascii=False),
                "mentions": mentions,
            },
        },
    }
    return event


def callback(
    bot: FeishuBot,
    text: str,
    user: str,
    chat_id: str,
    chat_type: str,
    event_id: str,
    message_id: str,
    now: float,
) -> tuple[dict[str, str], bytes]:
    """(headers, body) of an ``im.message.receive_v1`` callback as Feishu sends it."""
    event = event_json(bot, text, user, chat_id, chat_type, event_id, message_id, now)
    plain = json.dumps(event, ensure_ascii=False).encode()
    key = bot.credentials.encrypt_key.get_secret_value()
    if not key:
        return {"Content-Type": "application/json"}, plain
    body = json.dumps({"encrypt": feishu_crypto.encrypt(key, plain)}).encode()
    ts, nonce = str(int(now)), secrets.token_hex(8)
    return {
        "Content-Type": "application/json",
        "X-Lark-Request-Timestamp": ts,
        "X-Lark-Request-Nonce": nonce,
        "X-Lark-Signature": feishu_crypto.signature(ts, nonce, key, body),
    }, body


def routes(state: SimState, clock: Callable[[], float] = time.time) -> list[Route]:
    apps: dict[str, tuple[str, str, str]] = {}  # app_id -> (secret, bot id, platform)
    for bot in state.settings.bots if state.settings else []:
        if isinstance(bot, FeishuBot):
            apps[bot.credentials.app_id] = (
                bot.credentials.app_secret.get_secret_value(),
                bot.id,
                bot.platform,
            )
    tokens: dict[str, tuple[str, float]] = {}
    uuids: dict[str, float] = {}
    cards: dict[str, dict[str, Any]] = {}  # card_id -> content, sequence, streaming, history

    def fail(code: int, msg: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"code": code, "msg": msg}, status_code=status)

    async def token(request: Request) -> Response:
        state.stats["feishu_token"] += 1
        body = json.loads(await request.body() or b"{}")
        app = apps.get(str(body.get("app_id")))
        if app is None or app[0] != body.get("app_secret"):
            return fail(10014, "app secret invalid")
        tok = "t-" + secrets.token_hex(16)
        tokens[tok] = (str(body["app_id"]), clock() + state.token_lifetime)
        state.issued.append(tok)
        return JSONResponse(
            {"code": 0, "msg": "ok", "tenant_access_token": tok, "expire": int(state.token_lifetime)}
        )

    def authorized(request: Request) -> tuple[str, float] | None:
        info = tokens.get(request.headers.get("authorization", "").removeprefix("Bearer "))
        return info if info is not None and info[1] > clock() else None

    async def create_card(request: Request) -> Response:
        if authorized(request) is None:
            return fail(99991663, "Invalid access token for authorization", 400)
        body = json.loads(await request.body() or b"{}")
        card = json.loads(body.get("data") or "{}")
        card_id = f"card_{secrets.token_hex(8)}"
        cards[card_id] = {
            "content": "",
            "sequence": 0,
            "history": [],
            "streaming": bool(card.get("config", {}).get("streaming_mode")),
        }
        return JSONResponse({"code": 0, "msg": "success", "data": {"card_id": card_id}})

    async def card_update(request: Request) -> tuple[dict[str, Any], dict[str, Any]] | Response:
        """The checks every CardKit update passes: token, card, strictly increasing sequence."""
        if authorized(request) is None:
            return fail(99991663, "Invalid access token for authorization", 400)
        card = cards.get(request.path_params["card_id"])
        if card is None:
            return fail(300309, "card not found")
        body = json.loads(await request.body() or b"{}")
        if int(body.get("sequence", 0)) <= card["sequence"]:
            return fail(300317, "sequence number compare failed")
        card["sequence"] = int(body["sequence"])
        return card, body

    def card_messages(card_id: str) -> list[dict[str, Any]]:
        return [m for m in state.messages if m.get("card_id") == card_id]

    async def card_content(request: Request) -> Response:
        state.stats["feishu_card_update"] += 1
        checked = await card_update(request)
        if isinstance(checked, Response):
            return checked
        card, body = checked
        card["content"] = str(body.get("content", ""))
        card["history"].append([clock(), card["content"]])
        for m in card_messages(request.path_params["card_id"]):  # the card message shows it
            m["content"], m["updates"] = card["content"], m["updates"] + 1
            m["history"].append([clock(), card["content"]])
        return JSONResponse({"code": 0, "msg": "success"})

    async def card_settings(request: Request) -> Response:
        checked = await card_update(request)
        if isinstance(checked, Response):
            return checked
        card, body = checked
        settings = json.loads(body.get("settings") or "{}")
        card["streaming"] = bool(settings.get("config", {}).get("streaming_mode", card["streaming"]))
        for m in card_messages(request.path_params["card_id"]):
            m["streaming"] = card["streaming"]
        return JSONResponse({"code": 0, "msg": "success"})

    async def reply(request: Request) -> Response:
        state.stats["feishu_reply"] += 1
        raw = await request.body()
        info = authorized(request)
        if info is None:
            return fail(99991663, "Invalid access token for authorization", 400)
        if state.fail_next:
            code = state.fail_next.pop(0)
            return (
                fail(99991400, "request trigger frequency limit", 429)
                if code == 429
                else Response("busy", status_code=code)
            )
        body = json.loads(raw or b"{}")
        uuid = str(body.get("uuid", ""))
        if uuid and clock() - uuids.get(uuid, -1e18) < 3600:
            state.stats["duplicates_suppressed"] += 1
            return JSONResponse({"code": 0, "msg": "success", "data": {"message_id": "om_dup"}})
        uuids[uuid] = clock()
        content = json.loads(body.get("content") or "{}")
        _, bot, platform = apps[info[0]]
        entry: dict[str, Any] = {
            "platform": platform,
            "bot": bot,
            "reply_to": request.path_params["message_id"],
            "msgtype": body.get("msg_type"),
        }
        if content.get("type") == "card":  # a CardKit card, shown as it is updated
            card_id = str(content.get("data", {}).get("card_id", ""))
            card = cards.get(card_id)
            if card is None:
                return fail(300309, "card not found")
            entry.update(
                card_id=card_id, content=card["content"], updates=0, streaming=card["streaming"], history=[]
            )
        elif body.get("msg_type") == "text":
            entry["content"] = content.get("text")
        else:
            entry["content"] = (content.get("elements") or [{}])[0].get("content", "")
        state.record(entry, clock())
        return JSONResponse({"code": 0, "msg": "success", "data": {"message_id": f"om_{state.seq}"}})

    return [
        Route("/open-apis/auth/v3/tenant_access_token/internal", token, methods=["POST"]),
        Route("/open-apis/im/v1/messages/{message_id}/reply", reply, methods=["POST"]),
        Route("/open-apis/cardkit/v1/cards", create_card, methods=["POST"]),
        Route(
            "/open-apis/cardkit/v1/cards/{card_id}/elements/{element_id}/content",
            card_content,
            methods=["PUT"],
        ),
        Route("/open-apis/cardkit/v1/cards/{card_id}/settings", card_settings, methods=["PATCH"]),
    ]
