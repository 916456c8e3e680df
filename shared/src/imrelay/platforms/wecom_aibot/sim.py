"""WeCom AI bot (callback mode) for the simulator: the encrypted JSON message callbacks and refresh polls
WeCom sends, and reading the ingress's encrypted, signed replies."""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import urlencode

from imrelay.errors import VerifyError
from imrelay.platforms.wecom.crypto import WeComCrypto, crypto_for
from imrelay.platforms.wecom_aibot.config import WeComAIBot


def crypto(bot: WeComAIBot) -> WeComCrypto:
    return crypto_for(bot.credentials)


def _signed(bot: WeComAIBot, payload: dict[str, Any], now: float) -> tuple[str, dict[str, str], bytes]:
    cr = crypto(bot)
    enc = cr.encrypt(json.dumps(payload, ensure_ascii=False).encode())
    ts, nonce = str(int(now)), str(secrets.randbelow(10**10))
    query = urlencode({"msg_signature": cr.sign(ts, nonce, enc), "timestamp": ts, "nonce": nonce})
    return query, {"Content-Type": "application/json"}, json.dumps({"encrypt": enc}).encode()


def message_callback(
    bot: WeComAIBot, text: str, user: str, msgid: str, chat: str, now: float, sim_url: str
) -> tuple[str, dict[str, str], bytes]:
    payload: dict[str, Any] = {
        "msgid": msgid,
        "aibotid": "aib" + bot.id,
        "chattype": "group" if chat else "single",
        "from": {"userid": user},
        "msgtype": "text",
        "text": {"content": (f"@{bot.id} " if chat else "") + text},
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
