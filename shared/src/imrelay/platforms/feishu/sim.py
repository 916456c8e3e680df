"""Feishu / Lark for the simulator: ``tenant_access_token`` and the message reply API (with its ``uuid``
de-duplication), and the signed, encrypted event callback the ingress receives.

Media, as strict as Feishu: the message resource API serves users' files from the simulator's store
(``type`` must match: ``image`` for pictures, ``file`` for the rest; 100 MB at most, else 234037); the
image upload takes ``image_type=message`` and a picture of at most 10 MB (234006 above, 234010 empty,
234011 not a picture); the file upload takes a known ``file_type``, a ``file_name`` and at most 30 MB.
Image and file messages, and a card's ``img`` elements, must name a key this app uploaded."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from imrelay.media import simstore
from imrelay.media.sniff import sniff
from imrelay.platforms.feishu import crypto as feishu_crypto
from imrelay.platforms.feishu.config import FeishuBot
from imrelay.platforms.spec import SimMedia

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
    media: tuple[SimMedia, ...] = (),
) -> dict[str, Any]:
    """An ``im.message.receive_v1`` event (schema 2.0), as Feishu sends it on either channel: a ``text``
    message, a picture / file / voice / video message (one piece of media), or a rich-text ``post`` (text
    and pictures)."""
    c = bot.credentials
    mentions = []
    group = chat_type == "group"
    if group:
        mentions = [{"key": "@_user_1", "id": {"open_id": "ou_bot"}, "name": bot.id, "tenant_key": "t"}]
    message_type, content = message_content(text, media, group, bot.id)
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
                "message_type": message_type,
                "content": json.dumps(content, ensure_ascii=False),
                "mentions": mentions,
            },
        },
    }
    return event


def message_content(
    text: str, media: tuple[SimMedia, ...], group: bool, bot_name: str
) -> tuple[str, dict[str, Any]]:
    """(message_type, content) of a user's message: text alone, one piece of media alone (as its own
    type), or text with pictures (a ``post``; a file, voice or video always goes alone, as in Feishu)."""
    pictures = [m for m in media if m.kind == "image"]
    others = [m for m in media if m.kind != "image"]
    if others:
        m = others[0]
        if m.kind == "voice":
            return "audio", {"file_key": m.id, "duration": 1000}
        if m.kind == "video":
            return "media", {"file_key": m.id, "file_name": m.name, "image_key": "", "duration": 1000}
        return "file", {"file_key": m.id, "file_name": m.name}
    if len(pictures) == 1 and not text:
        return "image", {"image_key": pictures[0].id}
    if pictures:
        first: list[dict[str, Any]] = []
        if group:
            first.append({"tag": "at", "user_id": "@_user_1", "user_name": bot_name})
        if text:
            first.append({"tag": "text", "text": f" {text}" if group else text})
        paragraphs = [first] if first else []
        paragraphs += [[{"tag": "img", "image_key": p.id, "width": 64, "height": 64}] for p in pictures]
        return "post", {"title": "", "content": paragraphs}
    return "text", {"text": f"@_user_1 {text}" if group else text}


def callback(
    bot: FeishuBot,
    text: str,
    user: str,
    chat_id: str,
    chat_type: str,
    event_id: str,
    message_id: str,
    now: float,
    media: tuple[SimMedia, ...] = (),
) -> tuple[dict[str, str], bytes]:
    """(headers, body) of an ``im.message.receive_v1`` callback as Feishu sends it."""
    event = event_json(bot, text, user, chat_id, chat_type, event_id, message_id, now, media)
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


MB = 1024 * 1024
DOWNLOAD_LIMIT = 100 * MB
IMAGE_LIMIT = 10 * MB
FILE_LIMIT = 30 * MB
FILE_TYPES = frozenset({"opus", "mp4", "pdf", "doc", "xls", "ppt", "stream"})
IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/tiff", "image/bmp", "image/x-icon"}
)
INVALID_PARAM = 234001
NOT_IN_MESSAGE = 234003
TOO_LARGE = 234006
EMPTY_FILE = 234010
NOT_AN_IMAGE = 234011
DOWNLOAD_TOO_LARGE = 234037
BAD_CONTENT = 230001


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

    uploads: dict[str, str] = {}  # image_key / file_key -> the app that uploaded it

    def uploaded(key: object, app_id: str) -> simstore.MediaItem | None:
        item = simstore.get(state, key) if isinstance(key, str) and uploads.get(key) == app_id else None
        return item

    async def resource(request: Request) -> Response:
        """``GET /open-apis/im/v1/messages/{message_id}/resources/{file_key}?type=image|file``."""
        state.stats["feishu_resource"] += 1
        if authorized(request) is None:
            return fail(99991663, "Invalid access token for authorization", 400)
        kind = request.query_params.get("type")
        if kind not in ("image", "file"):
            return fail(INVALID_PARAM, "Invalid request param: type")
        item = simstore.get(state, request.path_params["file_key"])
        if item is None or item.origin != "user":
            return fail(NOT_IN_MESSAGE, "File not in msg")
        if (kind == "image") != (item.kind == "image"):
            return fail(INVALID_PARAM, "Invalid request param: type does not match the resource")
        if len(item.data) > DOWNLOAD_LIMIT:
            return fail(DOWNLOAD_TOO_LARGE, "Downloaded file size exceeds limit")
        data = item.data

        async def body() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 64 * 1024):  # counted as sent: a reader that stops early shows
                if await request.is_disconnected():
                    return
                state.stats["feishu_resource_bytes"] += len(data[i : i + 64 * 1024])
                yield data[i : i + 64 * 1024]

        return StreamingResponse(
            body(),
            media_type=item.mime,
            headers={
                "Content-Length": str(len(data)),
                "Content-Disposition": f'attachment; filename="{item.name}"',
            },
        )

    async def upload(request: Request, field: str, limit: int) -> tuple[bytes, str, str] | Response:
        """The checks both uploads pass: token, multipart form, the file's size. (bytes, name, app id)."""
        info = authorized(request)
        if info is None:
            return fail(99991663, "Invalid access token for authorization", 400)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + 64 * 1024:
            return fail(TOO_LARGE, "The file size exceed the max value")
        try:
            async with request.form(max_part_size=limit + 1) as form:
                part = form.get(field)
                fields = {k: v for k, v in form.items() if isinstance(v, str)}
                if part is None or isinstance(part, str):
                    return fail(INVALID_PARAM, f"Invalid request param: {field}")
                data = await part.read()
                name = part.filename or field
        except Exception:  # not multipart, or a part over the limit
            return fail(INVALID_PARAM, "Invalid request param")
        if not data:
            return fail(EMPTY_FILE, "File's size can't be 0")
        if len(data) > limit:
            return fail(TOO_LARGE, "The file size exceed the max value")
        request.state.fields = fields
        return data, name, info[0]

    async def upload_image(request: Request) -> Response:
        state.stats["feishu_image_upload"] += 1
        got = await upload(request, "image", IMAGE_LIMIT)
        if isinstance(got, Response):
            return got
        data, name, app_id = got
        if request.state.fields.get("image_type") not in ("message", "avatar"):
            return fail(INVALID_PARAM, "Invalid request param: image_type")
        mime = sniff(data)
        if mime not in IMAGE_TYPES:
            return fail(NOT_AN_IMAGE, "Can't recognize the image format")
        item = simstore.put(
            state,
            data,
            name=name,
            kind="image",
            origin="upload",
            mime=mime,
            id=f"img_v3_{secrets.token_hex(12)}",
        )
        uploads[item.id] = app_id
        return JSONResponse({"code": 0, "msg": "success", "data": {"image_key": item.id}})

    async def upload_file(request: Request) -> Response:
        state.stats["feishu_file_upload"] += 1
        got = await upload(request, "file", FILE_LIMIT)
        if isinstance(got, Response):
            return got
        data, name, app_id = got
        fields = request.state.fields
        if fields.get("file_type") not in FILE_TYPES:
            return fail(INVALID_PARAM, "Invalid request param: file_type")
        if not fields.get("file_name"):
            return fail(INVALID_PARAM, "Invalid request param: file_name")
        item = simstore.put(
            state,
            data,
            name=fields["file_name"],
            kind="file",
            origin="upload",
            mime=sniff(data),
            id=f"file_v3_{secrets.token_hex(12)}",
        )
        uploads[item.id] = app_id
        return JSONResponse({"code": 0, "msg": "success", "data": {"file_key": item.id}})

    async def card_elements(request: Request) -> Response:
        """``POST /open-apis/cardkit/v1/cards/{card_id}/elements``: add elements (``img`` ones must name
        an image this app uploaded)."""
        info = authorized(request)
        checked = await card_update(request)
        if isinstance(checked, Response):
            return checked
        card, body = checked
        assert info is not None
        if body.get("type") not in ("append", "insert_before", "insert_after"):
            return fail(INVALID_PARAM, "Invalid request param: type")
        try:
            elements = json.loads(body.get("elements") or "[]")
        except ValueError:
            return fail(INVALID_PARAM, "Invalid request param: elements")
        shown: list[dict[str, Any]] = []
        for element in elements if isinstance(elements, list) else []:
            if isinstance(element, dict) and element.get("tag") == "img":
                item = uploaded(element.get("img_key"), info[0])
                if item is None or item.kind != "image":
                    return fail(BAD_CONTENT, "invalid img_key")
                shown.append(item.describe())
        card.setdefault("elements", []).extend(elements)
        for m in card_messages(request.path_params["card_id"]):
            m.setdefault("media", []).extend(shown)
        return JSONResponse({"code": 0, "msg": "success"})

    def card_messages(card_id: str) -> list[dict[str, Any]]:
        return state.messages.where(card_id=card_id)

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
        elif body.get("msg_type") in ("image", "file"):
            key = content.get("image_key" if body.get("msg_type") == "image" else "file_key")
            item = uploaded(key, info[0])
            if item is None or (item.kind == "image") != (body.get("msg_type") == "image"):
                uuids.pop(uuid, None)
                return fail(BAD_CONTENT, f"invalid {body.get('msg_type')} key")
            entry.update(content=f"[{item.kind} {item.name}]", media=item.describe())
        else:
            entry["content"] = (content.get("elements") or [{}])[0].get("content", "")
        state.record(entry, clock())
        return JSONResponse({"code": 0, "msg": "success", "data": {"message_id": f"om_{state.seq}"}})

    return [
        Route("/open-apis/auth/v3/tenant_access_token/internal", token, methods=["POST"]),
        Route("/open-apis/im/v1/messages/{message_id}/reply", reply, methods=["POST"]),
        Route("/open-apis/cardkit/v1/cards", create_card, methods=["POST"]),
        Route("/open-apis/im/v1/messages/{message_id}/resources/{file_key}", resource, methods=["GET"]),
        Route("/open-apis/im/v1/images", upload_image, methods=["POST"]),
        Route("/open-apis/im/v1/files", upload_file, methods=["POST"]),
        Route("/open-apis/cardkit/v1/cards/{card_id}/elements", card_elements, methods=["POST"]),
        Route(
            "/open-apis/cardkit/v1/cards/{card_id}/elements/{element_id}/content",
            card_content,
            methods=["PUT"],
        ),
        Route("/open-apis/cardkit/v1/cards/{card_id}/settings", card_settings, methods=["PATCH"]),
    ]
