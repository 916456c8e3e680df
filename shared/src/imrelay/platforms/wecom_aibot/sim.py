"""WeCom AI bot (callback mode) for the simulator: the encrypted JSON message callbacks and refresh polls
WeCom sends, and reading the ingress's encrypted, signed replies.

Media a simulated user sends becomes WeCom's message of that kind: one picture, file or video is an
``image``/``file``/``video`` message with the URL of the encrypted file and its ``aeskey``; pictures with
text are a ``mixed`` message; voice arrives transcribed (its text is the message's text, or a stand-in).
Files with text are sent as the file alone, as WeCom cannot mix them. The URLs
(``/sim/aibot/media/<id>``, :mod:`.sim_api`) serve each file AES-encrypted with a key made for the message,
for ``MEDIA_URL_SECONDS``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from imrelay.errors import VerifyError
from imrelay.platforms.spec import SimMedia
from imrelay.platforms.wecom.crypto import WeComCrypto, crypto_for
from imrelay.platforms.wecom_aibot.config import WeComAIBot

MEDIA_URL_SECONDS = 300  # how long a message's file URL serves it


def media_key(item_id: str, nonce: str) -> bytes:
    """The key a file is encrypted with behind one message's URL (the simulator makes it up)."""
    return hashlib.sha256(f"imrelay-sim wecom_aibot media {item_id} {nonce}".encode()).digest()


def media_url(sim_url: str, item_id: str, now: float) -> tuple[str, str]:
    """A message's encrypted file URL and its ``aeskey`` (base64)."""
    nonce = secrets.token_hex(8)
    expires = int(now) + MEDIA_URL_SECONDS
    url = f"{sim_url.rstrip('/')}/sim/aibot/media/{item_id}?nonce={nonce}&expires={expires}"
    return url, base64.b64encode(media_key(item_id, nonce)).decode("ascii")


def message_body(text: str, media: Sequence[SimMedia], sim_url: str, now: float) -> dict[str, Any]:
    """The ``msgtype`` and its fields of a user's message with ``text`` and ``media``."""
    if not media:
        return {"msgtype": "text", "text": {"content": text}}
    first = media[0]
    if first.kind == "voice":
        return {"msgtype": "voice", "voice": {"content": text or f"(voice message {first.name})"}}
    images = [m for m in media if m.kind == "image"]
    if len(images) == len(media) and (text or len(images) > 1):
        items: list[dict[str, Any]] = [{"msgtype": "text", "text": {"content": text}}] if text else []
        for m in images:
            url, key = media_url(sim_url, m.id, now)
            items.append({"msgtype": "image", "image": {"url": url, "aeskey": key}})
        return {"msgtype": "mixed", "mixed": {"msg_item": items}}
    url, key = media_url(sim_url, first.id, now)
    return {"msgtype": first.kind, first.kind: {"url": url, "aeskey": key}}


def crypto(bot: WeComAIBot) -> WeComCrypto:
    return crypto_for(bot.credentials)


def _signed(bot: WeComAIBot, payload: dict[str, Any], now: float) -> tuple[str, dict[str, str], bytes]:
    cr = crypto(bot)
    enc = cr.encrypt(json.dumps(payload, ensure_ascii=False).encode())
    ts, nonce = str(int(now)), str(secrets.randbelow(10**10))
    query = urlencode({"msg_signature": cr.sign(ts, nonce, enc), "timestamp": ts, "nonce": nonce})
    return query, {"Content-Type": "application/json"}, json.dumps({"encrypt": enc}).encode()


def message_callback(
    bot: WeComAIBot,
    text: str,
    user: str,
    msgid: str,
    chat: str,
    now: float,
    sim_url: str,
    media: Sequence[SimMedia] = (),
) -> tuple[str, dict[str, str], bytes]:
    said = (f"@{bot.id} " if chat else "") + text if text or not media else text
    payload: dict[str, Any] = {
        "msgid": msgid,
        "aibotid": "aib" + bot.id,
        "chattype": "group" if chat else "single",
        "from": {"userid": user},
        **message_body(said, media, sim_url, now),
        "response_url": f"{sim_url}/cgi-bin/aibot/response?response_code={secrets.token_hex(8)}",
    }
    if chat:
        payload["chatid"] = chat
    return _signed(bot, payload, now)


def refresh_callback(bot: WeComAIBot, sid: str, user: str, now: float) -> tuple[str, dict[str, str], bytes]:
    return _signed(
        bot,
        {
            "msgid": secrets.token_hex(16),
            "aibotid": "aib" + bot.id,
            "chattype": "single",
            "from": {"userid": user},
            "msgtype": "stream",
            "stream": {"id": sid},
        },
        now,
    )


CONTENT_LIMIT_BYTES = 20480


class ReplyRefused(ValueError):
    """A reply WeCom would not show (a stream ``content`` over 20,480 UTF-8 bytes)."""


def read_reply(bot: WeComAIBot, body: bytes) -> dict[str, Any]:
    """Verify and decrypt the ingress's reply envelope; refuse a stream over WeCom's size limit."""
    env = json.loads(body)
    cr = crypto(bot)
    if cr.sign(env["timestamp"], env["nonce"], env["encrypt"]) != env["msgsignature"]:
        raise VerifyError("reply signature mismatch")
    result: dict[str, Any] = json.loads(cr.decrypt(env["encrypt"]))
    content = str((result.get("stream") or {}).get("content", ""))
    if len(content.encode()) > CONTENT_LIMIT_BYTES:
        raise ReplyRefused(f"stream content of {len(content.encode())} bytes")
    return result
