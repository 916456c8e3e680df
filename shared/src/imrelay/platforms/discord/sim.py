"""Discord for the simulator: editing an interaction's original response and follow-ups, and the
Ed25519-signed ``/ask`` interaction the ingress receives. Signing needs the application's private key: the
simulator derives it from a seed (``DISCORD_SIM_SEED``, hex) whose public key is the one configured; the
demo bot of ``imrelay dev`` uses :data:`DEMO_SEED`.

Media, at their strictest: a user's files (the simulator's store) are attachments of the interaction
(ATTACHMENT options resolved in ``data.resolved.attachments``) with Discord-like signed CDN URLs,
``/discord-cdn/attachments/{channel}/{id}/{filename}?ex=&is=&hm=``: a wrong signature or a URL past its
expiry (``ex``, 24 hours after ``is``) answers 404 "This content is no longer available.". A follow-up
or a channel message may be multipart (``payload_json`` + ``files[n]``, at most 10, each named by an
``attachments`` entry ``{id: n, filename}``): a file above 20 MiB (:data:`UPLOAD_LIMIT`, what the
interaction's ``attachment_size_limit`` says) is 413 / 40005 "Request entity too large"; an invalid
``payload_json`` 400 / 50109; an ``attachments`` entry without its file, or a file without an entry,
400 / 50035. Files sent are kept (``origin: upload``) and recorded with the message
(``msgtype`` image/file, ``media``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imrelay import ed25519
from imrelay.media import simstore
from imrelay.platforms.discord.config import DiscordBot
from imrelay.platforms.discord.media import MAX_FILES, TOO_LARGE, UPLOAD_LIMIT, VOICE_MESSAGE_FLAG
from imrelay.platforms.spec import SimMedia

if TYPE_CHECKING:
    from imrelay_sim.server import SimState


DEMO_SEED = "696d72656c61792d64656d6f2d646973636f72642d7369676e696e672d6b6579"  # "imrelay-demo-discord-…"


def public_key_for(seed_hex: str) -> str:
    return ed25519.public_key_hex(ed25519.signing_key(bytes.fromhex(seed_hex)))


# ---- the CDN's signed attachment URLs ----------------------------------------------------------------

CDN_KEY = b"imrelay-sim-discord-cdn"  # the simulator's own signing key (Discord's is its secret)
ATTACHMENT_TTL = 24 * 3600
GONE = "This content is no longer available."


def _signature(path: str, expires: int, issued: int) -> str:
    return hmac.new(CDN_KEY, f"{path}:{expires:x}:{issued:x}".encode(), hashlib.sha256).hexdigest()


def cdn_path(channel: str, media_id: str, name: str) -> str:
    return "/discord-cdn/attachments/" + "/".join(quote(p, safe="") for p in (channel, media_id, name))


def attachment_url(sim_url: str, channel: str, media_id: str, name: str, now: float) -> str:
    """A signed URL of a user's file, valid :data:`ATTACHMENT_TTL` seconds from ``now``."""
    path = cdn_path(channel, media_id, name)
    issued = int(now)
    expires = issued + ATTACHMENT_TTL
    return f"{sim_url.rstrip('/')}{path}?ex={expires:x}&is={issued:x}&hm={_signature(path, expires, issued)}"


def url_valid(path: str, query: dict[str, str], now: float) -> bool:
    """Whether a CDN URL's signature holds and it has not expired."""
    try:
        expires, issued = int(query.get("ex", ""), 16), int(query.get("is", ""), 16)
    except ValueError:
        return False
    good = hmac.compare_digest(_signature(path, expires, issued), query.get("hm", ""))
    return good and now < expires


def attachment_object(m: SimMedia, sim_url: str, channel: str, now: float) -> dict[str, Any]:
    """A user's file as Discord describes an attachment."""
    url = attachment_url(sim_url, channel, m.id, m.name, now)
    out: dict[str, Any] = {
        "id": m.id,
        "filename": m.name,
        "size": m.size,
        "url": url,
        "proxy_url": url,
        "content_type": m.mime,
    }
    if m.kind == "voice":
        out |= {"duration_secs": 1.0, "waveform": "AAAA"}
    return out


def message_flags(media: Sequence[SimMedia]) -> int:
    return VOICE_MESSAGE_FLAG if any(m.kind == "voice" for m in media) else 0


def callback(
    bot: DiscordBot,
    text: str,
    user: str,
    channel: str,
    interaction_id: str,
    token: str,
    now: float,
    seed_hex: str,
    *,
    media: Sequence[SimMedia] = (),
    sim_url: str = "",
) -> tuple[dict[str, str], bytes]:
    options: list[dict[str, Any]] = [{"name": "q", "type": 3, "value": text}] if text or not media else []
    options += [
        {"name": f"file{n + 1}" if n else "file", "type": 11, "value": m.id} for n, m in enumerate(media)
    ]
    data: dict[str, Any] = {"id": "cmd-ask", "name": "ask", "type": 1, "options": options}
    if media:
        data["resolved"] = {"attachments": {m.id: attachment_object(m, sim_url, channel, now) for m in media}}
    body = json.dumps(
        {
            "application_id": bot.credentials.application_id,
            "channel_id": channel,
            "guild_id": "sim-guild",
            "attachment_size_limit": UPLOAD_LIMIT,
            "data": data,
            "id": interaction_id,
            "member": {"user": {"id": user, "username": user}},
            "token": token,
            "type": 2,
            "version": 1,
        },
        ensure_ascii=False,
    ).encode()
    ts = str(int(now))
    key = ed25519.signing_key(bytes.fromhex(seed_hex))
    return {
        "Content-Type": "application/json",
        "X-Signature-Timestamp": ts,
        "X-Signature-Ed25519": ed25519.sign(key, ts.encode() + body),
    }, body


# ---- messages with files ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upload:
    name: str
    data: bytes
    mime: str


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"message": message, "code": code}, status_code=status, headers=headers)


async def read_send(
    request: Request, limit: int = UPLOAD_LIMIT, headers: dict[str, str] | None = None
) -> tuple[dict[str, Any], list[Upload]] | Response:
    """A message body as Discord reads it: JSON, or multipart ``payload_json`` + ``files[n]``; the
    refusal Discord answers when it is not acceptable."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _error(400, 50109, "The request body contains invalid JSON.", headers)
        return (body if isinstance(body, dict) else {}), []
    async with request.form(max_files=100, max_part_size=2 * 1024 * 1024) as form:
        try:
            payload = json.loads(str(form.get("payload_json") or "{}"))
        except ValueError:
            return _error(400, 50109, "The request body contains invalid JSON.", headers)
        if not isinstance(payload, dict):
            return _error(400, 50109, "The request body contains invalid JSON.", headers)
        files: dict[int, Upload] = {}
        for key, value in form.multi_items():
            if isinstance(value, str):
                continue
            if not (key.startswith("files[") and key.endswith("]") and key[6:-1].isdigit()):
                return _error(400, 50035, "Invalid Form Body", headers)
            data = await value.read()
            if len(data) > limit:
                return _error(413, TOO_LARGE, "Request entity too large", headers)
            files[int(key[6:-1])] = Upload(
                value.filename or "file", data, value.content_type or "application/octet-stream"
            )
    if len(files) > MAX_FILES:
        return _error(400, 50035, "Invalid Form Body", headers)
    named = payload.get("attachments") or []
    ids = {int(a["id"]) for a in named if isinstance(a, dict) and str(a.get("id", "")).isdigit()}
    if ids != set(files) or len(ids) != len(named):  # an entry without its file, or a file unnamed
        return _error(400, 50035, "Invalid Form Body", headers)
    by_id = {int(a["id"]): a for a in named}
    return payload, [
        Upload(str(by_id[n].get("filename") or up.name), up.data, up.mime) for n, up in sorted(files.items())
    ]


def keep_uploads(state: SimState, uploads: Sequence[Upload], content: str) -> dict[str, Any]:
    """Keep a message's files in the simulator's store: what its record adds."""
    if not uploads:
        return {}
    items = [
        simstore.put(
            state,
            u.data,
            name=u.name,
            kind="image" if u.mime.startswith("image/") else "file",
            origin="upload",
            mime=u.mime,
        )
        for u in uploads
    ]
    first = items[0]
    return {
        "content": content or f"[{first.kind} {first.name}]",
        "msgtype": first.kind,
        "media": first.describe(),
        "files": [i.describe() for i in items],
    }


def new_token() -> str:
    return "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(24)


def routes(state: SimState, clock: Callable[[], float] = time.time) -> list[Route]:
    apps = {
        bot.credentials.application_id: bot.id
        for bot in (state.settings.bots if state.settings else [])
        if isinstance(bot, DiscordBot)
    }

    async def edit_original(request: Request) -> Response:
        state.stats["discord_edit"] += 1
        body = json.loads(await request.body() or b"{}")
        token = request.path_params["token"]
        bot = apps.get(request.path_params["app"], "")
        for m in state.messages.where(token=token, platform="discord"):  # an edit replaces what is shown
            if m.get("kind") == "original":
                m["content"], m["edits"] = body.get("content", ""), m["edits"] + 1
                m["history"].append([clock(), m["content"]])
                return JSONResponse({"id": m["id"], "content": m["content"]})
        content = body.get("content", "")
        state.record(
            {
                "platform": "discord",
                "bot": bot,
                "token": token,
                "kind": "original",
                "edits": 1,
                "id": f"dm{state.seq + 1}",
                "content": content,
                "history": [[clock(), content]],
            },
            clock(),
        )
        return JSONResponse({"id": f"dm{state.seq}", "content": body.get("content", "")})

    async def followup(request: Request) -> Response:
        read = await read_send(request)
        if isinstance(read, Response):
            state.stats["discord_upload_refused"] += 1
            return read
        body, uploads = read
        content = str(body.get("content") or "")
        if not content and not uploads:
            return _error(400, 50006, "Cannot send an empty message")
        state.stats["discord_followup"] += 1
        state.record(
            {
                "platform": "discord",
                "bot": apps.get(request.path_params["app"], ""),
                "token": request.path_params["token"],
                "kind": "followup",
                "content": content,
                **keep_uploads(state, uploads, content),
            },
            clock(),
        )
        return JSONResponse({"id": f"dm{state.seq}"})

    async def cdn(request: Request) -> Response:
        p = request.path_params
        item = simstore.get(state, p["id"])
        path = cdn_path(p["channel"], p["id"], p["name"])
        if item is None or not url_valid(path, dict(request.query_params), clock()):
            state.stats["discord_cdn_refused"] += 1
            return Response(GONE, status_code=404, media_type="text/plain")
        state.stats["discord_cdn_download"] += 1
        return Response(item.data, media_type=item.mime)

    return [
        Route("/api/v10/webhooks/{app}/{token}/messages/@original", edit_original, methods=["PATCH"]),
        Route("/api/v10/webhooks/{app}/{token}", followup, methods=["POST"]),
        Route("/discord-cdn/attachments/{channel}/{id}/{name}", cdn, methods=["GET"]),
    ]
