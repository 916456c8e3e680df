"""Building WeCom callbacks the way WeCom does: XML, AES-encrypted and signed (pure functions)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import urlencode
from xml.sax.saxutils import escape

from imrelay.platforms.wecom.crypto import WeComCallbackCredentials, WeComCrypto


@dataclass(frozen=True, slots=True)
class SignedCallback:
    query: str  # the URL-encoded query string
    body: bytes


def _cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def app_text_xml(corp_id: str, agent_id: str, user: str, text: str, msg_id: str, create_time: int) -> str:
    return (
        f"<xml><ToUserName>{_cdata(corp_id)}</ToUserName><FromUserName>{_cdata(user)}</FromUserName>"
        f"<CreateTime>{create_time}</CreateTime><MsgType>{_cdata('text')}</MsgType>"
        f"<Content>{_cdata(text)}</Content><MsgId>{escape(msg_id)}</MsgId>"
        f"<AgentID>{escape(agent_id)}</AgentID></xml>"
    )


def robot_text_xml(
    chat_id: str, chat_type: str, user: str, name: str, text: str, msg_id: str, webhook_url: str
) -> str:
    return (
        f"<xml><WebhookUrl>{_cdata(webhook_url)}</WebhookUrl><ChatId>{_cdata(chat_id)}</ChatId>"
        f"<ChatType>{escape(chat_type)}</ChatType><From><UserId>{escape(user)}</UserId>"
        f"<Name>{_cdata(name)}</Name></From><MsgType>text</MsgType>"
        f"<Text><Content>{_cdata(text)}</Content></Text><MsgId>{escape(msg_id)}</MsgId></xml>"
    )


def encrypted_post(
    crypto: WeComCrypto,
    plaintext: str,
    timestamp: int,
    to_user: str = "",
    agent_id: str | None = None,
    nonce: str | None = None,
) -> SignedCallback:
    """An encrypted callback POST: the envelope body and its signed query string."""
    nonce = nonce or str(secrets.randbelow(10**10))
    enc = crypto.encrypt(plaintext.encode("utf-8"))
    sig = crypto.sign(str(timestamp), nonce, enc)
    agent = f"<AgentID>{_cdata(agent_id)}</AgentID>" if agent_id else ""
    body = f"<xml><ToUserName>{_cdata(to_user)}</ToUserName><Encrypt>{_cdata(enc)}</Encrypt>{agent}</xml>"
    query = urlencode({"msg_signature": sig, "timestamp": str(timestamp), "nonce": nonce})
    return SignedCallback(query=query, body=body.encode("utf-8"))


def url_verification(crypto: WeComCrypto, echo: str, timestamp: int, nonce: str | None = None) -> str:
    """The query string of a GET URL verification whose decrypted echostr is ``echo``."""
    nonce = nonce or str(secrets.randbelow(10**10))
    enc = crypto.encrypt(echo.encode("utf-8"))
    sig = crypto.sign(str(timestamp), nonce, enc)
    return urlencode({"msg_signature": sig, "timestamp": str(timestamp), "nonce": nonce, "echostr": enc})


def url_check(credentials: WeComCallbackCredentials, echo: str, now: float) -> str:
    """The query of WeCom's URL check for a bot with these callback credentials."""
    from .crypto import crypto_for

    return url_verification(crypto_for(credentials), echo, int(now))
