"""The simulator as a library: a platform's callback built and posted as the platform would (used by
``imrelay-sim send`` and by tests)."""

from __future__ import annotations

import time

import httpx

from imrelay.config import BotConfig
from imrelay.platforms import spec_for
from imrelay.platforms.spec import SimMedia, SimMessage

__all__ = [
    "DEFAULT_INGRESS",
    "DEFAULT_SIM",
    "build_callback",
    "build_request",
    "post_with_retries",
    "upload_media",
]

DEFAULT_SIM = "http://127.0.0.1:8090"
DEFAULT_INGRESS = "http://127.0.0.1:8080"


def upload_media(sim_url: str, data: bytes, *, name: str, kind: str, mime: str | None = None) -> SimMedia:
    """Put a file a simulated user sends into the simulator (its platform APIs then serve it)."""
    params = {"name": name, "kind": kind, **({"mime": mime} if mime else {})}
    resp = httpx.post(f"{sim_url.rstrip('/')}/sim/media", params=params, content=data, timeout=30)
    resp.raise_for_status()
    d = resp.json()
    return SimMedia(
        kind=kind,
        id=d["id"],
        name=d["name"],
        size=d["size"],
        sha256=d["sha256"],
        md5=d["md5"],
        mime=d["mime"],
    )


def build_request(
    bot: BotConfig,
    text: str,
    user: str,
    msg_id: str,
    now: float,
    sim_url: str = DEFAULT_SIM,
    chat: str = "",
    media: tuple[SimMedia, ...] = (),
) -> tuple[str, dict[str, str], bytes]:
    """(query, headers, body) of a message from ``user`` to ``bot`` as its platform sends it. The same
    ``msg_id`` gives the same platform ids (a platform retry); ``chat`` makes it a group message; ``media``
    (see :func:`upload_media`) makes it a picture, file or voice message."""
    simulate = spec_for(bot).sim_request
    if simulate is None:
        raise SystemExit(f"imrelay-sim: platform {bot.platform} cannot be simulated yet")
    message = SimMessage(
        text=text, user=user, msg_id=msg_id, now=now, sim_url=sim_url, chat=chat, media=media
    )
    req = simulate(bot, message)
    return req.query, dict(req.headers), req.body


def build_callback(
    bot: BotConfig, text: str, user: str, msg_id: str, now: int, sim_url: str = DEFAULT_SIM, chat: str = ""
) -> tuple[str, bytes]:
    """(query, body) of a text-message callback for ``bot``, as its platform would send it."""
    query, _, body = build_request(bot, text, user, msg_id, now, sim_url, chat)
    return query, body


def post_with_retries(
    client: httpx.Client,
    url: str,
    body: bytes,
    headers: dict[str, str],
    retries: int,
    interval: float,
    msg_id: str,
) -> httpx.Response | None:
    """Post a callback the way the platforms do: a failed or timed-out one is sent again, unchanged."""
    resp: httpx.Response | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(interval)
        try:
            resp = client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            print(f"callback {msg_id} -> {type(exc).__name__}", flush=True)
            continue
        print(f"callback {msg_id} -> ingress answered {resp.status_code}", flush=True)
        if resp.status_code < 500:
            return resp
    return resp
