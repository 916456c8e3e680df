"""WeCom AI bot (智能机器人) in callback mode: JSON callbacks encrypted with the WeCom scheme (ReceiveId ""),
answered synchronously with encrypted JSON.

A new message is stored and answered with a ``stream`` reply naming the answer's stream (the same id for
every retry of the message); WeCom then polls with refresh callbacks (``msgtype: stream``), each answered
with the content accumulated so far from the shared stream store, ``finish: true`` at the end. A poll for a
stream nobody knows (expired, or from before a data loss) is answered ``finish: true`` with a short note,
so WeCom stops polling instead of looping on errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from imrelay.answer_streams import StreamRecord, stream_id
from imrelay.callbacks import CallbackRequest, CallbackResult, Payload, json_body, parse_json, parse_model
from imrelay.errors import ParseError
from imrelay.events import Attachment, Chat, ChatType, InboundMessage, Sender, inbound_id
from imrelay.media import MediaRef
from imrelay.platforms.wecom.crypto import WeComCrypto, crypto_for
from imrelay.platforms.wecom_aibot.config import WeComAIBot
from imrelay.platforms.wecom_aibot.handle import WeComAIBotHandle

from ..wecom.callbacks import query_params, verify_signed, verify_url
from .media import INLINE_IMAGES, inline_image

UNKNOWN_STREAM = "This answer is no longer available. Please ask again."
_LEADING_MENTION = re.compile(r"^\s*@\S+\s*")


class From(Payload):
    userid: str


class Content(Payload):
    content: str | None = None


class Media(Payload):
    url: str | None = None
    aeskey: str | None = None  # the file's own key (base64); absent: the bot's EncodingAESKey
    filename: str | None = None
    name: str | None = None
    size: int | None = None


class Item(Payload):
    msgtype: str | None = None
    text: Content | None = None
    image: Media | None = None


class Mixed(Payload):
    msg_item: list[Item] | None = None


class EventInfo(Payload):
    eventtype: str | None = None


class Message(Payload):
    msgid: str
    msgtype: str
    chattype: str | None = None
    chatid: str | None = None
    response_url: str | None = None
    text: Content | None = None
    voice: Content | None = None
    mixed: Mixed | None = None
    image: Media | None = None
    file: Media | None = None
    video: Media | None = None
    event: EventInfo | None = None
    aeskey: str | None = None  # some messages carry the key beside the media
    # ``from`` is a keyword: read through an alias
    sender: From = Field(alias="from")


class StreamRef(Payload):
    id: str | None = None


class Poll(Payload):
    stream: StreamRef | None = None


def attachment(kind: str, media: Media, aeskey: str | None = None) -> Attachment:
    """A media item of a message: its encrypted file's URL, and its key when the message has one."""
    url = media.url or ""
    size = media.size if media.size is not None and media.size >= 0 else None
    return Attachment(
        kind=kind,
        ref=url,
        url=url,
        name=media.filename or media.name or "",
        size=size,
        key=media.aeskey or aeskey or None,
    )


def normalize(
    payload: dict[str, Any], bot_id: str, now: float, sid: str, req_id: str | None = None
) -> InboundMessage:
    """A message callback, or with ``req_id`` a message frame of the bot's long connection (answered on
    the socket, on that frame's ``req_id``)."""
    m = parse_model(Message, payload, "AI-bot message")
    if not m.msgid or not m.sender.userid or not m.msgtype:
        raise ParseError("AI-bot message lacks msgid, from.userid or msgtype")
    kind, user = m.msgtype, m.sender.userid
    group = m.chattype == "group"
    chat_id = (m.chatid or user) if group else user
    text, attachments = "", []
    if kind in ("text", "voice"):  # a voice message comes already turned into text
        body = m.text if kind == "text" else m.voice
        text = (body.content if body else None) or ""
    elif kind == "mixed":
        for item in (m.mixed.msg_item if m.mixed else None) or []:
            if item.msgtype == "text":
                text += (item.text.content if item.text else None) or ""
            elif item.msgtype == "image":
                if item.image is not None and item.image.url:
                    attachments.append(attachment("image", item.image, m.aeskey))
    elif kind in ("image", "file", "video"):
        media: Media | None = getattr(m, kind)
        if media is not None and media.url:
            attachments.append(attachment(kind, media, m.aeskey))
    if kind == "voice" and text:  # WeCom transcribed it: nothing to download
        attachments.append(Attachment(kind="voice", ref="", transcript=text))
        text = ""
    if group:
        text = _LEADING_MENTION.sub("", text, count=1)
    key = f"wecom_aibot:msgid:{m.msgid}"
    if req_id is None:
        handle = WeComAIBotHandle(stream_id=sid, mode="callback", response_url=m.response_url or "")
    else:
        handle = WeComAIBotHandle(
            stream_id=sid,
            mode="long_connection",
            response_url=m.response_url or "",
            req_id=req_id,
            chatid=m.chatid or user,
        )
    event = (m.event.eventtype if m.event else None) if kind == "event" else None
    return InboundMessage(
        id=inbound_id(bot_id, key),
        platform="wecom_aibot",
        bot_id=bot_id,
        platform_message_id=key,
        kind="event" if kind == "event" else "message",
        event=event,
        chat=Chat(id=chat_id, type=ChatType.GROUP if group else ChatType.DIRECT),
        sender=Sender(id=user),
        text=text.strip(),
        mentioned=True,
        attachments=attachments,
        reply_handle=handle,
        received_at=datetime.fromtimestamp(now, UTC),
    )


def envelope(
    crypto: WeComCrypto, reply: str, timestamp: str, nonce: str, random16: bytes | None = None
) -> bytes:
    """The encrypted, signed JSON envelope of a passive reply."""
    enc = crypto.encrypt(reply.encode("utf-8"), random16)
    return json_body(
        {
            "encrypt": enc,
            "msgsignature": crypto.sign(timestamp, nonce, enc),
            "timestamp": timestamp,
            "nonce": nonce,
        }
    )


def stream_body(sid: str, content: str, finish: bool) -> dict[str, Any]:
    return {"msgtype": "stream", "stream": {"id": sid, "finish": finish, "content": content}}


@dataclass(frozen=True, slots=True)
class WeComAIBotAdapter:
    bot_id: str
    crypto: WeComCrypto
    replay_window: float = 300.0

    @classmethod
    def from_bot(cls, bot: WeComAIBot) -> WeComAIBotAdapter:
        return cls(bot_id=bot.id, crypto=crypto_for(bot.credentials), replay_window=bot.replay_window_seconds)

    def encrypted(self, request: CallbackRequest, reply: dict[str, Any]) -> bytes:
        """The encrypted JSON envelope WeCom expects, signed with the request's timestamp and nonce."""
        return envelope(
            self.crypto,
            json.dumps(reply, ensure_ascii=False),
            request.query.get("timestamp", ""),
            request.query.get("nonce", ""),
        )

    def handle(self, request: CallbackRequest) -> CallbackResult:
        if request.method == "GET":
            return CallbackResult(
                body=verify_url(self.crypto, request.query, request.now, self.replay_window)
            )
        query_params(request.query, "msg_signature", "timestamp", "nonce")
        ciphertext = parse_json(request.body).get("encrypt")
        if not isinstance(ciphertext, str):
            raise ParseError("body has no encrypt field")
        verify_signed(self.crypto, request.query, ciphertext, request.now, self.replay_window)
        payload = parse_json(self.crypto.decrypt(ciphertext))
        if payload.get("msgtype") == "stream":  # WeCom polling an answer
            stream = parse_model(Poll, payload, "stream refresh").stream
            sid = (stream.id if stream else None) or ""
            if not sid:
                raise ParseError("stream refresh without a stream id")
            return CallbackResult(content_type="application/json", stream_poll=sid)
        sid = stream_id(self.bot_id, str(payload.get("msgid")))
        msg = normalize(payload, self.bot_id, request.now, sid)
        if msg.kind == "event":
            return CallbackResult(message=msg, dedupe_key=msg.platform_message_id)
        return CallbackResult(
            body=self.encrypted(request, stream_body(sid, "", False)),
            content_type="application/json",
            message=msg,
            dedupe_key=msg.platform_message_id,
            stream_open=sid,
        )

    def poll_reply(
        self,
        request: CallbackRequest,
        sid: str,
        record: StreamRecord | None,
        images: Sequence[tuple[MediaRef, bytes]] = (),
    ) -> bytes:
        if record is None:
            return self.encrypted(request, stream_body(sid, UNKNOWN_STREAM, True))
        body = stream_body(sid, record.content, record.finish)
        if record.finish and images:  # only the finished stream may carry images
            body["stream"]["msg_item"] = [inline_image(data) for _, data in images[:INLINE_IMAGES]]
        return self.encrypted(request, body)
