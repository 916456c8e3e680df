"""Discord for the simulator: editing an interaction's original response and follow-ups, and the
Ed25519-signed ``/ask`` interaction the ingress receives. Signing needs the application's private key: the
simulator derives it from a seed (``DISCORD_SIM_SEED``, hex) whose public key is the one configured; the
demo bot of ``imrelay dev`` uses :data:`DEMO_SEED`."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imrelay import ed25519
from imrelay.platforms.discord.config import DiscordBot

if TYPE_CHECKING:
    from imrelay_sim.server import SimState


DEMO_SEED = "696d72656c61792d64656d6f2d646973636f72642d7369676e696e672d6b6579"  # "imrelay-demo-discord-…"


def public_key_for(seed_hex: str) -> str:
    return ed25519.public_key_hex(ed25519.signing_key(bytes.fromhex(seed_hex)))


def callback(
    bot: DiscordBot,
    text: str,
    user: str,
    channel: str,
    interaction_id: str,
    token: str,
    now: float,
    seed_hex: str,
) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "application_id": bot.credentials.application_id,
            "channel_id": channel,
            "guild_id": "sim-guild",
            "data": {
                "id": "cmd-ask",
                "name": "ask",
                "type": 1,
                "options": [{"name": "q", "type": 3, "value": text}],
            },
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
        for m in state.messages:  # an edit replaces what the user sees
            if m.get("platform") == "discord" and m.get("token") == token and m.get("kind") == "original":
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
        state.stats["discord_followup"] += 1
        body = json.loads(await request.body() or b"{}")
        state.record(
            {
                "platform": "discord",
                "bot": apps.get(request.path_params["app"], ""),
                "token": request.path_params["token"],
                "kind": "followup",
                "content": body.get("content", ""),
            },
            clock(),
        )
        return JSONResponse({"id": f"dm{state.seq}"})

    return [
        Route("/api/v10/webhooks/{app}/{token}/messages/@original", edit_original, methods=["PATCH"]),
        Route("/api/v10/webhooks/{app}/{token}", followup, methods=["POST"]),
    ]
