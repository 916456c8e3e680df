"""WeCom self-built application (企业微信自建应用) callbacks: ReceiveId = CorpID, XML payloads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from imrelay.callbacks import CallbackRequest, CallbackResult
from imrelay.errors import ParseError, VerifyError
from imrelay.events import Attachment, Chat, ChatType, InboundMessage, Sender, inbound_id
from imrelay.platforms.wecom.crypto import WeComCrypto, crypto_for
from imrelay.platforms.wecom_app.config import WeComAppBot
from imrelay.platforms.wecom_app.handle import WeComAppHandle

from ..wecom.callbacks import decrypt_post, verify_url

_MEDIA_KINDS = {"image": "image", "voice": "voice", "video": "video", "file": "file"}
_VOICE_TYPES = {"amr": "audio/amr", "speex": "audio/speex"}


def media_attachment(msg_type: str, fields: dict[str, str]) -> Attachment:
    """An image, voice, video or file message's media: its ``MediaId`` (fetched with ``media/get``), an
    image's ``PicUrl``, a voice message's ``Format`` and, where speech recognition is on, its
    ``Recognition`` (then nothing is downloaded); a file's ``FileName`` and ``FileSize`` when given."""
    size = fields.get("FileSize", "")
    voice_format = fields.get("Format", "").lower()
    return Attachment(
        kind=_MEDIA_KINDS[msg_type],
        ref=fields.get("MediaId", ""),
        url=fields.get("PicUrl") or None,
        name=fields.get("FileName", "")[:200],
        size=int(size) if size.isdigit() else None,
        mime=_VOICE_TYPES.get(voice_format) if msg_type == "voice" else None,
        transcript=((fields.get("Recognition") or "").strip() or None) if msg_type == "voice" else None,
    )


def dedupe_key(fields: dict[str, str]) -> str:
    """``MsgId`` for messages; ``FromUserName + CreateTime`` for events (which carry no MsgId)."""
    msg_id = fields.get("MsgId")
    if msg_id:
        return f"wecom:msgid:{msg_id}"
    sender, created = fields.get("FromUserName"), fields.get("CreateTime")
    if not sender or not created:
        raise ParseError("message has neither MsgId nor FromUserName+CreateTime")
    return f"wecom:event:{sender}:{created}"


def normalize(fields: dict[str, str], bot_id: str, agent_id: str, now: float) -> InboundMessage:
    """Turn the decrypted XML fields into an :class:`InboundMessage`."""
    msg_type = fields.get("MsgType")
    user = fields.get("FromUserName")
    if not msg_type or not user:
        raise ParseError("message lacks MsgType or FromUserName")
    got_agent = fields.get("AgentID")
    if got_agent and got_agent != agent_id:
        raise VerifyError("callback is for another agent id")
    key = dedupe_key(fields)
    attachments: list[Attachment] = []
    text = ""
    kind = "message"
    event = None
    if msg_type == "text":
        text = fields.get("Content", "")
    elif msg_type == "event":
        kind, event = "event", fields.get("Event") or None
    elif msg_type in _MEDIA_KINDS:
        attachments.append(media_attachment(msg_type, fields))
    elif msg_type == "location":
        attachments.append(Attachment(kind="location", ref=fields.get("Label", ""), url=None))
    elif msg_type == "link":
        attachments.append(Attachment(kind="link", ref=fields.get("Url", ""), url=fields.get("Url") or None))
        text = fields.get("Title", "")
    return InboundMessage(
        id=inbound_id(bot_id, key),
        platform="wecom_app",
        bot_id=bot_id,
        platform_message_id=key,
        kind=kind,
        event=event,
        chat=Chat(id=user, type=ChatType.DIRECT),
        sender=Sender(id=user),
        text=text,
        mentioned=True,
        attachments=attachments,
        reply_handle=WeComAppHandle(touser=user, agentid=agent_id),
        received_at=datetime.fromtimestamp(now, UTC),
    )


@dataclass(frozen=True, slots=True)
class WeComAppAdapter:
    bot_id: str
    agent_id: str
    crypto: WeComCrypto
    replay_window: float = 300.0

    @classmethod
    def from_bot(cls, bot: WeComAppBot) -> WeComAppAdapter:
        return cls(
            bot_id=bot.id,
            agent_id=bot.credentials.agent_id,
            crypto=crypto_for(bot.credentials),
            replay_window=bot.replay_window_seconds,
        )

    def handle(self, request: CallbackRequest) -> CallbackResult:
        if request.method == "GET":
            return CallbackResult(
                body=verify_url(self.crypto, request.query, request.now, self.replay_window)
            )
        fields = decrypt_post(self.crypto, request.query, request.body, request.now, self.replay_window)
        msg = normalize(fields, self.bot_id, self.agent_id, request.now)
        # Empty 200 body: "no passive reply"; the answer goes out through message/send.
        return CallbackResult(message=msg, dedupe_key=msg.platform_message_id)
