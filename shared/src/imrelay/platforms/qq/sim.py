"""QQ bots for the simulator: ``/app/getAppAccessToken`` and the passive-reply endpoints (five replies
per message, a ``(msg_id, msg_seq)`` pair only once), and the Ed25519-signed dispatch the ingress receives.

Media, as strict as QQ's documentation (the error codes below are the simulator's; QQ's are unconfirmed):

* A simulated user's files arrive as ``attachments[] {content_type, filename, size, url}``, the URL the
  simulator's ``{sim_url}/sim/media/{id}``; a voice message (silk) carries its text in ``asr_refer_text``.
* ``POST /v2/users/{openid}/files`` and ``/v2/groups/{group_openid}/files`` ``{file_type, file_data |
  url, srv_send_msg}``: ``file_type`` 1 image (PNG/JPG, 30 MB), 2 video (MP4, 100 MB), 3 voice (SILK,
  20 MB); 4 (files) is not open to bots. ``file_data`` is base64 of the bytes; a ``url`` the simulator
  cannot serve is 304082 (rich media fetch failed); ``srv_send_msg: true`` would be a proactive message
  (refused, 304003). Answers ``{file_uuid, file_info, ttl}``: the ``file_info`` is good in that chat for
  ``ttl`` seconds.
* A ``msg_type: 7`` reply shows a ``file_info``; it is recorded with ``"msgtype"`` (``image``, ...) and
  ``"media"`` (the uploaded file's description, with its sha256).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imrelay import ed25519
from imrelay.media import simstore
from imrelay.media.sniff import sniff
from imrelay.platforms.qq.config import QQBot
from imrelay.platforms.qq.delivery import FILE_TYPES, UPLOAD_LIMITS, UPLOAD_TYPES
from imrelay.platforms.qq.keys import qq_seed
from imrelay.platforms.spec import SimMedia

if TYPE_CHECKING:
    from imrelay_sim.server import SimState


FILE_INFO_TTL = 3600  # seconds a file_info is good for (QQ answers a ttl with each upload)
# the simulator's error codes for uploads QQ refuses
BAD_FILE_TYPE = 40034001  # a file_type QQ does not take (4: files are not open to bots)
BAD_FILE_DATA = 40034002  # neither file_data nor url, or file_data that is not base64
BAD_MEDIA_TYPE = 40034003  # bytes of another type than the file_type says
BAD_MEDIA_SIZE = 40034004  # empty, or above the file_type's limit
BAD_FILE_INFO = 40034005  # a media message with a file_info unknown, expired or of another chat
FETCH_FAILED = 304082  # a url the simulator cannot fetch
KIND_OF_FILE_TYPE = {v: k for k, v in FILE_TYPES.items()}


def attachments(media: tuple[SimMedia, ...], sim_url: str, text: str = "") -> list[dict[str, Any]]:
    """A message's ``attachments`` as QQ sends them: pictures and video with their MIME type, voice and
    files with QQ's word for them; a voice message's text (``text``) as QQ's recognition."""
    out: list[dict[str, Any]] = []
    for m in media:
        content_type = m.mime if m.kind in ("image", "video") else m.kind
        a: dict[str, Any] = {
            "content_type": content_type,
            "filename": m.name,
            "size": m.size,
            "url": f"{sim_url.rstrip('/')}/sim/media/{m.id}",
        }
        if m.kind == "image":
            a.update({"width": 64, "height": 64})
        if m.kind == "voice" and text:
            a["asr_refer_text"] = text
        out.append(a)
    return out


def callback(
    bot: QQBot,
    text: str,
    user: str,
    group: str,
    msg_id: str,
    now: float,
    media: tuple[SimMedia, ...] = (),
    sim_url: str = "",
) -> tuple[dict[str, str], bytes]:
    """A ``GROUP_AT_MESSAGE_CREATE`` dispatch (``C2C_MESSAGE_CREATE`` when ``group`` is empty), with
    ``media`` as its attachments (a voice message's ``text`` is QQ's recognition of it)."""
    voice = any(m.kind == "voice" for m in media)
    d: dict[str, Any]
    if group:
        event, d = "GROUP_AT_MESSAGE_CREATE", {"group_openid": group, "author": {"member_openid": user}}
    else:
        event, d = "C2C_MESSAGE_CREATE", {"author": {"user_openid": user}}
    d.update(
        {
            "id": msg_id,
            "content": (" " if group else "") + ("" if voice else text),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+08:00", time.localtime(now)),
        }
    )
    if media:
        d["attachments"] = attachments(media, sim_url, text if voice else "")
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
    infos: dict[str, tuple[str, str, float]] = {}  # file_info -> (media id, chat, expiry)

    def app_of(request: Request) -> str | None:
        info = tokens.get(request.headers.get("authorization", "").removeprefix("QQBot "))
        return info[0] if info is not None and info[1] > clock() else None

    def refused(code: int, message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"code": code, "message": message}, status_code=status)

    def served(url: str) -> simstore.MediaItem | None:
        """A ``url`` upload: the simulator fetches only its own files (``/sim/media/{id}``)."""
        marker = "/sim/media/"
        return simstore.get(state, url.split(marker, 1)[1]) if marker in url else None

    async def upload(request: Request) -> Response:
        state.stats["qq_upload"] += 1
        if app_of(request) is None:
            return refused(11244, "token not exist or expire", 401)
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return refused(BAD_FILE_DATA, "body is not a JSON object")
        if body.get("srv_send_msg"):
            return refused(304003, "proactive messages are not allowed")
        kind = KIND_OF_FILE_TYPE.get(body.get("file_type"))  # type: ignore[arg-type]
        if kind is None:
            return refused(BAD_FILE_TYPE, f"file_type {body.get('file_type')!r} is not supported")
        if isinstance(body.get("file_data"), str) and body["file_data"]:
            try:
                data = base64.b64decode(body["file_data"], validate=True)
            except (binascii.Error, ValueError):
                return refused(BAD_FILE_DATA, "file_data is not base64")
            name = f"upload.{kind.value}"
        elif isinstance(body.get("url"), str) and body["url"]:
            item = served(body["url"])
            if item is None:
                return refused(FETCH_FAILED, "rich media fetch failed")
            data, name = item.data, item.name
        else:
            return refused(BAD_FILE_DATA, "file_data or url is required")
        mime = sniff(data)
        if mime not in UPLOAD_TYPES[kind]:
            return refused(BAD_MEDIA_TYPE, f"{mime} is not a {kind.value} QQ takes")
        if not data or len(data) > UPLOAD_LIMITS[kind]:
            return refused(BAD_MEDIA_SIZE, f"{len(data)} bytes: not within the {kind.value} limit")
        item = simstore.put(state, data, name=name, kind=kind.value, origin="upload", mime=mime)
        info = base64.b64encode(secrets.token_bytes(24)).decode()
        chat = next(iter(request.path_params.values()))
        infos[info] = (item.id, chat, clock() + FILE_INFO_TTL)
        return JSONResponse({"file_uuid": item.id, "file_info": info, "ttl": FILE_INFO_TTL})

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
        target = next(v for k, v in request.path_params.items())
        media: dict[str, Any] | None = None
        if body.get("msg_type") == 7:
            sent = body.get("media")
            held = infos.get(str(sent.get("file_info") or "")) if isinstance(sent, dict) else None
            item = simstore.get(state, held[0]) if held else None
            if held is None or item is None or held[1] != target or held[2] <= clock():
                return refused(BAD_FILE_INFO, "file_info is invalid or expired")
            media = item.describe()
        replies[msg_id].add(seq)
        if media is not None:
            state.record(
                {
                    "platform": "qq",
                    "bot": apps[info[0]][1],
                    "chat": target,
                    "reply_to": msg_id,
                    "msg_seq": seq,
                    "content": f"[{media['kind']} {media['name']}]",
                    "msgtype": media["kind"],
                    "media": media,
                },
                clock(),
            )
            return JSONResponse({"id": f"qqmsg{state.seq}", "timestamp": int(clock())})
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
        Route("/v2/groups/{group}/files", upload, methods=["POST"]),
        Route("/v2/users/{user}/files", upload, methods=["POST"]),
        Route("/channels/{channel}/messages", send, methods=["POST"]),
        Route("/dms/{guild}/messages", send, methods=["POST"]),
    ]
