"""Building WeCom callbacks the way WeCom does: XML, AES-encrypted and signed (pure functions)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import urlencode
from xml.sax.saxutils import escape

from imrelay.platforms.spec import SimMedia
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


def pic_url(sim_url: str, media: SimMedia) -> str:
    """Where the simulator serves a user's picture by URL."""
    return f"{sim_url.rstrip('/')}/sim/wecom/pic/{media.id}"


def app_media_xml(
    corp_id: str,
    agent_id: str,
    user: str,
    media: SimMedia,
    msg_id: str,
    create_time: int,
    sim_url: str,
    recognition: str = "",
) -> str:
    """An app's image, voice, video or file message: its ``MediaId`` (the simulator's file id), an
    image's ``PicUrl``, a voice message's ``Format`` and ``Recognition`` (when given)."""
    kind = media.kind if media.kind in ("image", "voice", "video", "file") else "file"
    extra = f"<MediaId>{_cdata(media.id)}</MediaId>"
    if kind == "image":
        extra = f"<PicUrl>{_cdata(pic_url(sim_url, media))}</PicUrl>" + extra
    elif kind == "voice":
        fmt = "amr" if media.mime == "audio/amr" or media.name.lower().endswith(".amr") else "speex"
        extra += f"<Format>{_cdata(fmt)}</Format>"
        if recognition:
            extra += f"<Recognition>{_cdata(recognition)}</Recognition>"
    elif kind == "video":
        extra += f"<ThumbMediaId>{_cdata(media.id)}</ThumbMediaId>"
    return (
        f"<xml><ToUserName>{_cdata(corp_id)}</ToUserName><FromUserName>{_cdata(user)}</FromUserName>"
        f"<CreateTime>{create_time}</CreateTime><MsgType>{_cdata(kind)}</MsgType>{extra}"
        f"<MsgId>{escape(msg_id)}</MsgId><AgentID>{escape(agent_id)}</AgentID></xml>"
    )


def robot_media_xml(
    chat_id: str,
    chat_type: str,
    user: str,
    name: str,
    text: str,
    images: tuple[SimMedia, ...],
    msg_id: str,
    webhook_url: str,
    sim_url: str,
) -> str:
    """A robot's ``image`` message (one picture, no text) or ``mixed`` message (text and pictures)."""
    head = (
        f"<xml><WebhookUrl>{_cdata(webhook_url)}</WebhookUrl><ChatId>{_cdata(chat_id)}</ChatId>"
        f"<ChatType>{escape(chat_type)}</ChatType><From><UserId>{escape(user)}</UserId>"
        f"<Name>{_cdata(name)}</Name></From>"
    )
    tail = f"<MsgId>{escape(msg_id)}</MsgId></xml>"
    if len(images) == 1 and not text:
        url = pic_url(sim_url, images[0])
        return head + f"<MsgType>image</MsgType><Image><ImageUrl>{_cdata(url)}</ImageUrl></Image>" + tail
    items = []
    if text:
        items.append(
            f"<MsgItem><MsgType>text</MsgType><Text><Content>{_cdata(text)}</Content></Text></MsgItem>"
        )
    for m in images:
        items.append(
            f"<MsgItem><MsgType>image</MsgType><Image><ImageUrl>{_cdata(pic_url(sim_url, m))}"
            "</ImageUrl></Image></MsgItem>"
        )
    return head + "<MsgType>mixed</MsgType><MixedMessage>" + "".join(items) + "</MixedMessage>" + tail


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
