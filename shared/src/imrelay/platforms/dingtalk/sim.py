"""DingTalk for the simulator: session webhooks, ``/v1.0/oauth2/accessToken`` and the robot send API
(20 messages a minute per robot, 130101 beyond), and the signed robot callback the ingress receives.

Media, as strict as DingTalk's documentation:

* ``POST /v1.0/robot/messageFiles/download`` ``{downloadCode, robotCode}`` (new token): the robot's code
  must be the caller's, the code a file a user sent; answers ``{downloadUrl}``, a URL on the simulator
  good for ``DOWNLOAD_URL_SECONDS`` (then HTTP 403), serving the user's file.
* ``GET /gettoken?appkey&appsecret`` (the legacy token) and ``POST /media/upload?access_token&type=``
  (multipart ``media``): ``type`` image (JPG/PNG/GIF/BMP, 20 MB), voice (AMR/MP3/WAV, 2 MB), video (MP4,
  20 MB) or file (doc, docx, xls, xlsx, ppt, pptx, zip, pdf, rar; 20 MB): 40004 for another type, 40005
  for a file it does not take, 40006 for a size above the limit, 40014 for a bad token.
* The robot API's ``sampleImageMsg`` shows an uploaded ``media_id`` (``photoURL``); it is recorded with
  ``"msgtype": "image"`` and ``"media"`` (the uploaded file's description, with its sha256).
"""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imrelay.media import simstore
from imrelay.media.sniff import sniff
from imrelay.platforms.dingtalk import crypto as dingtalk_crypto
from imrelay.platforms.dingtalk.config import DingTalkBot
from imrelay.platforms.dingtalk.delivery import UPLOAD_EXTENSIONS, UPLOAD_LIMITS, UPLOAD_TYPES
from imrelay.platforms.spec import SimMedia

if TYPE_CHECKING:
    from imrelay_sim.server import SimState

DOWNLOAD_URL_SECONDS = 3600.0  # a downloadUrl's life (unconfirmed: DingTalk says "temporary")
LEGACY_TOKEN_ERROR = {"errcode": 40014, "errmsg": "不合法的access_token"}


class NotInGroups(ValueError):
    """DingTalk sends a robot voice, files and video one-to-one only."""


def media_content(text: str, media: tuple[SimMedia, ...], group: bool) -> dict[str, Any]:
    """The message fields (``msgtype`` and its content) of a message with ``media``, as DingTalk sends
    them: one picture alone is a ``picture``; pictures with text (or several) a ``richText``; a voice
    message (``audio``: ``text`` is what DingTalk recognised), a ``video`` or a ``file`` comes alone, and
    only one-to-one."""
    images = [m for m in media if m.kind == "image"]
    others = [m for m in media if m.kind != "image"]
    if others:
        if group:
            raise NotInGroups("in groups DingTalk robots receive only text, pictures and rich text")
        if len(media) > 1:
            raise ValueError("a DingTalk voice, file or video message carries one file, alone")
        m = others[0]
        if m.kind == "voice":
            content: dict[str, Any] = {"downloadCode": m.id, "duration": 3000}
            if text:
                content["recognition"] = text
            return {"msgtype": "audio", "content": content}
        if m.kind == "video":
            return {
                "msgtype": "video",
                "content": {"downloadCode": m.id, "duration": 3, "videoType": "mp4"},
            }
        return {
            "msgtype": "file",
            "content": {"downloadCode": m.id, "fileName": m.name, "spaceId": "1", "fileId": m.id[-8:]},
        }
    if len(images) == 1 and not text:
        code = images[0].id
        return {"msgtype": "picture", "content": {"downloadCode": code, "pictureDownloadCode": code}}
    items: list[dict[str, Any]] = [{"text": (" " if group else "") + text}] if text else []
    items += [{"downloadCode": m.id, "pictureDownloadCode": m.id, "type": "picture"} for m in images]
    return {"msgtype": "richText", "content": {"richText": items}}


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
    media: tuple[SimMedia, ...] = (),
) -> tuple[dict[str, str], bytes]:
    c = bot.credentials
    now_ms = int(now * 1000)
    message: dict[str, Any] = (
        media_content(text, media, group)
        if media
        else {"msgtype": "text", "text": {"content": (" " if group else "") + text}}
    )
    body = {
        "msgId": msg_id,
        **message,
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
    legacy: dict[str, tuple[str, float]] = {}  # the legacy API's tokens (oapi): token -> app key, expiry
    links: dict[str, tuple[str, float]] = {}  # a downloadUrl's secret -> media id, expiry
    uploads: dict[str, str] = {}  # media_id -> the simulator's media id
    robot_codes = {  # robot code -> app key
        bot.credentials.expected_robot_code: bot.credentials.app_key
        for bot in (state.settings.bots if state.settings else [])
        if isinstance(bot, DingTalkBot)
    }
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
        if body.get("msgKey") == "sampleImageMsg":
            item = simstore.get(state, uploads.get(str(param.get("photoURL")), ""))
            if item is None:
                return JSONResponse(
                    {"code": "invalidParameter.photoURL", "message": "photoURL is not a media id"},
                    status_code=400,
                )
            state.record(
                {
                    "platform": "dingtalk",
                    "bot": bot,
                    "chat": chat,
                    "via": "api",
                    "content": f"[image {item.name}]",
                    "msgtype": "image",
                    "media": item.describe(),
                },
                clock(),
            )
            return JSONResponse({"processQueryKey": f"q{state.seq}"})
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

    def app_of_token(request: Request) -> str | None:
        info = tokens.get(request.headers.get("x-acs-dingtalk-access-token", ""))
        return info[0] if info is not None and info[1] > clock() else None

    async def file_download(request: Request) -> Response:
        state.stats["dingtalk_file_download"] += 1
        app = app_of_token(request)
        if app is None:
            return JSONResponse(
                {"code": "InvalidAuthentication", "message": "token invalid"}, status_code=401
            )
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict) or not body.get("downloadCode") or not body.get("robotCode"):
            return JSONResponse(
                {"code": "MissingParameter", "message": "downloadCode and robotCode are required"},
                status_code=400,
            )
        if robot_codes.get(str(body["robotCode"])) != app:
            return JSONResponse(
                {"code": "Forbidden.AccessDenied", "message": "robotCode is not the caller's"},
                status_code=403,
            )
        item = simstore.get(state, str(body["downloadCode"]))
        if item is None or item.origin != "user":
            return JSONResponse(
                {"code": "invalidParameter.downloadCode", "message": "downloadCode is invalid"},
                status_code=400,
            )
        secret = secrets.token_urlsafe(16)
        links[secret] = (item.id, clock() + DOWNLOAD_URL_SECONDS)
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"downloadUrl": f"{base}/sim/dingtalk/file/{secret}"})

    async def file_get(request: Request) -> Response:
        link = links.get(request.path_params["secret"])
        if link is None or link[1] <= clock():
            return Response(b"<Error><Code>AccessDenied</Code></Error>", 403, media_type="application/xml")
        item = simstore.get(state, link[0])
        if item is None:
            return Response(b"<Error><Code>NoSuchKey</Code></Error>", 404, media_type="application/xml")
        state.stats["dingtalk_file_served"] += 1
        return Response(item.data, media_type=item.mime)

    async def legacy_token(request: Request) -> Response:
        q = request.query_params
        app = apps.get(q.get("appkey", ""))
        if app is None or app[0] != q.get("appsecret"):
            return JSONResponse({"errcode": 40089, "errmsg": "不合法的corpid或corpsecret"})
        tok = secrets.token_hex(16)
        legacy[tok] = (q["appkey"], clock() + state.token_lifetime)
        state.issued.append(tok)
        return JSONResponse(
            {"errcode": 0, "errmsg": "ok", "access_token": tok, "expires_in": int(state.token_lifetime)}
        )

    async def media_upload(request: Request) -> Response:
        state.stats["dingtalk_upload"] += 1
        info = legacy.get(request.query_params.get("access_token", ""))
        if info is None or info[1] <= clock():
            return JSONResponse(LEGACY_TOKEN_ERROR)
        kind = request.query_params.get("type", "")
        if kind not in {k.value for k in UPLOAD_LIMITS}:
            return JSONResponse({"errcode": 40004, "errmsg": "不合法的媒体文件类型"})
        async with request.form(max_part_size=simstore.MAX_SIM_MEDIA) as form:
            media = form.get("media")
            if media is None or isinstance(media, str):
                return JSONResponse({"errcode": 41001, "errmsg": "缺少media参数"})
            data = await media.read()
            name = media.filename or "media"
        mime = sniff(data)
        allowed = {k.value: v for k, v in UPLOAD_TYPES.items()}
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if (kind in allowed and mime not in allowed[kind]) or (
            kind == "file" and ext not in UPLOAD_EXTENSIONS
        ):
            return JSONResponse({"errcode": 40005, "errmsg": "不合法的文件类型"})
        if not data or len(data) > {k.value: v for k, v in UPLOAD_LIMITS.items()}[kind]:
            return JSONResponse({"errcode": 40006, "errmsg": "不合法的文件大小"})
        item = simstore.put(state, data, name=name, kind=kind, origin="upload", mime=mime)
        media_id = f"@lA{secrets.token_urlsafe(18)}"
        uploads[media_id] = item.id
        return JSONResponse(
            {
                "errcode": 0,
                "errmsg": "ok",
                "type": kind,
                "media_id": media_id,
                "created_at": int(clock() * 1000),
            }
        )

    return [
        Route("/robot/sendBySession", session_send, methods=["POST"]),
        Route("/v1.0/robot/messageFiles/download", file_download, methods=["POST"]),
        Route("/sim/dingtalk/file/{secret}", file_get, methods=["GET"]),
        Route("/gettoken", legacy_token, methods=["GET"]),
        Route("/media/upload", media_upload, methods=["POST"]),
        Route("/v1.0/oauth2/accessToken", token, methods=["POST"]),
        Route("/v1.0/robot/oToMessages/batchSend", robot_send, methods=["POST"]),
        Route("/v1.0/robot/groupMessages/send", robot_send, methods=["POST"]),
    ]
