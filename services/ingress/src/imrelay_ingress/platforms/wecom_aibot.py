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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from imrelay.aibot_streams import StreamRecord, stream_id
from imrelay.config import BotConfig, Platform, WeComAIBot
from imrelay.errors import ParseError
from imrelay.events import Attachment, Chat, ChatType, InboundMessage, Sender, inbound_id
from imrelay.wecom_crypto import WeComCrypto, crypto_for

from . import CallbackRequest, CallbackResult, json_body, parse_json
from .wecom import query_params, verify_url

UNKNOWN_STREAM = "This answer is no longer available. Please ask again."
_LEADING_MENTION = re.compile(r"^\s*@\S+\s*")


def normalize(payload: dict[str, Any], bot_id: str, now: float, sid: str) -> InboundMessage:
    msgid, kind = payload.get("msgid"), payload.get("msgtype")
    user = (payload.get("from") or {}).get("userid")
    if not msgid or not user or not kind:
        raise ParseError("AI-bot message lacks msgid, from.userid or msgtype")
    group = payload.get("chattype") == "group"
    chat_id = str(payload.get("chatid") or user) if group else str(user)
    text, attachments = "", []
    if kind == "text":
        text = str((payload.get("text") or {}).get("content", ""))
    elif kind == "voice":
        text = str((payload.get("voice") or {}).get("content", ""))  # already speech-to-text
    elif kind == "mixed":
        for item in (payload.get("mixed") or {}).get("msg_item") or []:
            if item.get("msgtype") == "text":
                text += str((item.get("text") or {}).get("content", ""))
            elif item.get("msgtype") == "image":
                url = str((item.get("image") or {}).get("url", ""))
                attachments.append(Attachment(kind="image", ref=url, url=url or None))
    elif kind in ("image", "file", "video"):
        url = str((payload.get(kind) or {}).get("url", ""))
        attachments.append(Attachment(kind=kind, ref=url, url=url or None))
    if group:
        text = _LEADING_MENTION.sub("", text, count=1)
    key = f"wecom_aibot:msgid:{msgid}"
    handle = {"stream_id": sid, "mode": "callback"}
    if payload.get("response_url"):
        handle["response_url"] = str(payload["response_url"])
    event = (payload.get("event") or {}).get("eventtype") if kind == "event" else None
    return InboundMessage(
        id=inbound_id(bot_id, key), platform=Platform.WECOM_AIBOT, bot_id=bot_id,
        platform_message_id=key, kind="event" if kind == "event" else "message", event=event,
        chat=Chat(id=chat_id, type=ChatType.GROUP if group else ChatType.DIRECT),
        sender=Sender(id=str(user)), text=text.strip(), mentioned=True, attachments=attachments,
        reply_handle=handle, received_at=datetime.fromtimestamp(now, UTC),
    )


def envelope(crypto: WeComCrypto, reply: str, timestamp: str, nonce: str,
             random16: bytes | None = None) -> bytes:
    """The encrypted, signed JSON envelope of a passive reply."""
    enc = crypto.encrypt(reply.encode("utf-8"), random16)
    return json_body({"encrypt": enc, "msgsignature": crypto.sign(timestamp, nonce, enc),
                      "timestamp": timestamp, "nonce": nonce})


def stream_body(sid: str, content: str, finish: bool) -> dict[str, Any]:
    return {"msgtype": "stream", "stream": {"id": sid, "finish": finish, "content": content}}


@dataclass(frozen=True, slots=True)
class WeComAIBotAdapter:
    bot_id: str
    crypto: WeComCrypto

    @classmethod
    def from_bot(cls, bot: BotConfig) -> WeComAIBotAdapter:
        assert isinstance(bot, WeComAIBot)
        return cls(bot_id=bot.id, crypto=crypto_for(bot.credentials))

    def encrypted(self, request: CallbackRequest, reply: dict[str, Any]) -> bytes:
        """The encrypted JSON envelope WeCom expects, signed with the request's timestamp and nonce."""
        return envelope(self.crypto, json.dumps(reply, ensure_ascii=False),
                        request.query.get("timestamp", ""), request.query.get("nonce", ""))

    def handle(self, request: CallbackRequest) -> CallbackResult:
        if request.method == "GET":
            return CallbackResult(body=verify_url(self.crypto, request.query))
        sig, ts, nonce = query_params(request.query, "msg_signature", "timestamp", "nonce")
        envelope = parse_json(request.body)
        if not isinstance(envelope.get("encrypt"), str):
            raise ParseError("body has no encrypt field")
        payload = parse_json(self.crypto.verify_and_decrypt(sig, ts, nonce, envelope["encrypt"]))
        if payload.get("msgtype") == "stream":  # WeCom polling an answer
            sid = str((payload.get("stream") or {}).get("id", ""))
            if not sid:
                raise ParseError("stream refresh without a stream id")
            return CallbackResult(content_type="application/json", stream_poll=sid)
        msgid = str(payload.get("msgid") or "")
        sid = stream_id(self.bot_id, msgid)
        msg = normalize(payload, self.bot_id, request.now, sid)
        if msg.kind == "event":
            return CallbackResult(message=msg, dedupe_key=msg.platform_message_id)
        return CallbackResult(body=self.encrypted(request, stream_body(sid, "", False)),
                              content_type="application/json", message=msg,
                              dedupe_key=msg.platform_message_id, stream_open=sid)

    def poll_reply(self, request: CallbackRequest, sid: str, record: StreamRecord | None) -> bytes:
        if record is None:
            return self.encrypted(request, stream_body(sid, UNKNOWN_STREAM, True))
        return self.encrypted(request, stream_body(sid, record.content, record.finish))
