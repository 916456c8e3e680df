"""QQ bot webhooks (QQ 开放平台): every request, op 13 URL validation included, is verified first with
Ed25519 over ``X-Signature-Timestamp + raw body`` (the key derived from the bot secret) and its timestamp
checked against the replay window; op 0 dispatches are acked with op 12.

The op 13 answer signs ``event_ts + plain_token`` with the same key that signs events (``timestamp +
body``). So that the answer can never serve as an event signature, only a verified request is answered and
only a ``plain_token`` of letters and digits is signed: an event body is a JSON object and starts with
``{``.

Media: C2C, group and channel messages carry ``attachments[] {content_type, filename, size, url}``; each
becomes an :class:`~imrelay.events.Attachment` whose ``ref`` is the URL (fetched by the delivery through the
SSRF guard). ``content_type`` is a MIME type (``image/png``, ``video/mp4``) or a word (``file``, ``voice``);
a voice message (silk) may carry QQ's recognition in ``asr_refer_text`` and a WAV copy in
``voice_wav_url``. A message with attachments and no text is a message too."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from Crypto.PublicKey import ECC
from pydantic import Field

from imrelay import ed25519
from imrelay.callbacks import (
    CallbackRequest,
    CallbackResult,
    Payload,
    check_timestamp,
    json_body,
    parse_json,
    parse_model,
)
from imrelay.errors import ParseError, VerifyError
from imrelay.events import Attachment, Chat, ChatType, InboundMessage, Sender, inbound_id
from imrelay.platforms.qq.config import QQBot
from imrelay.platforms.qq.handle import QQHandle, TargetKind
from imrelay.platforms.qq.keys import qq_seed

ACK = json_body({"op": 12})
_MENTION = re.compile(r"<@!?\w+>\s*")

# event -> (chat type, reply kind, where the chat id is, where the sender id is)
EVENTS: dict[str, tuple[ChatType, TargetKind, str, tuple[str, ...]]] = {
    "GROUP_AT_MESSAGE_CREATE": (ChatType.GROUP, "group", "group_openid", ("member_openid",)),
    "C2C_MESSAGE_CREATE": (ChatType.DIRECT, "c2c", "", ("user_openid",)),
    "AT_MESSAGE_CREATE": (ChatType.GROUP, "channel", "channel_id", ("id",)),
    "DIRECT_MESSAGE_CREATE": (ChatType.DIRECT, "dm", "guild_id", ("id",)),
}


class Envelope(Payload):
    op: int
    t: str | None = None
    d: Any = None


class Validation(Payload):
    plain_token: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
    event_ts: Annotated[str, Field(pattern=r"^[0-9]{1,16}$")]


class Author(Payload):
    id: str | None = None
    member_openid: str | None = None
    user_openid: str | None = None
    username: str | None = None


class QQAttachment(Payload):
    content_type: str | None = None
    filename: str | None = None
    size: Any = None  # a number (QQ has sent it as a string too)
    url: str | None = None
    asr_refer_text: str | None = None  # a voice message as QQ recognised it
    voice_wav_url: str | None = None  # a voice message as WAV (the original is silk)


class Message(Payload):
    id: str
    content: str | None = None
    group_openid: str | None = None
    channel_id: str | None = None
    guild_id: str | None = None
    author: Author
    attachments: list[QQAttachment] = Field(default_factory=list)


def _url(raw: str | None) -> str:
    """QQ's attachment URLs, some without a scheme (``gchat.qpic.cn/...`` in channels): https then."""
    url = (raw or "").strip()
    if url and not urlsplit(url).scheme:
        url = "https://" + url.lstrip("/")
    return url


def media_kind(content_type: str, filename: str = "") -> str:
    """The attachment kind of a QQ ``content_type`` (a MIME type or QQ's word for it)."""
    t = content_type.strip().lower()
    if t.startswith("image") or t in ("pic", "picture"):
        return "image"
    if t.startswith(("voice", "audio")) or filename.lower().endswith((".silk", ".amr")):
        return "voice"
    if t.startswith("video"):
        return "video"
    return "file"


def attachment(a: QQAttachment) -> Attachment | None:
    """One of a message's ``attachments``, as an :class:`Attachment` (``None`` without a URL or text)."""
    content_type = (a.content_type or "").strip()
    name = (a.filename or "").strip().rsplit("/", 1)[-1][:200]
    kind = media_kind(content_type, name)
    url = _url(a.url)
    transcript = (a.asr_refer_text or "").strip() if kind == "voice" else ""
    mime = content_type if "/" in content_type else None
    if kind == "voice" and a.voice_wav_url:  # the WAV copy, which speech-to-text reads
        url, mime = _url(a.voice_wav_url), "audio/wav"
    if not url and not transcript:
        return None
    size = a.size if isinstance(a.size, int) and not isinstance(a.size, bool) and a.size >= 0 else None
    if isinstance(a.size, str) and a.size.strip().isdigit():
        size = int(a.size)
    return Attachment(
        kind=kind, ref=url, url=url or None, name=name, size=size, mime=mime, transcript=transcript or None
    )


def normalize(envelope: Envelope, bot_id: str, now: float) -> InboundMessage | None:
    spec = EVENTS.get(envelope.t or "")
    if spec is None:
        return None
    chat_type, reply_kind, chat_field, author_fields = spec
    d = parse_model(Message, envelope.d, "QQ message")
    user = next((v for f in author_fields if (v := getattr(d.author, f))), None)
    if not d.id or not user:
        raise ParseError("QQ message lacks id or author")
    chat_id = getattr(d, chat_field) if chat_field else user
    if not chat_id:
        raise ParseError(f"QQ message lacks {chat_field}")
    text = _MENTION.sub("", d.content or "").strip()
    attachments = [a for raw in d.attachments if (a := attachment(raw)) is not None]
    key = f"qq:msg:{d.id}"
    return InboundMessage(
        id=inbound_id(bot_id, key),
        platform="qq",
        bot_id=bot_id,
        platform_message_id=key,
        chat=Chat(id=chat_id, type=chat_type),
        sender=Sender(id=user, name=d.author.username or ""),
        text=text,
        attachments=attachments,
        mentioned=True,
        reply_handle=QQHandle(target_kind=reply_kind, target=chat_id, msg_id=d.id, guild_id=d.guild_id or ""),
        received_at=datetime.fromtimestamp(now, UTC),
    )


def validation_answer(key: ECC.EccKey, plain_token: str, event_ts: str) -> bytes:
    """The op 13 answer: ``plain_token`` and the hex Ed25519 signature of ``event_ts + plain_token``."""
    signature = ed25519.sign(key, (event_ts + plain_token).encode("utf-8"))
    return json_body({"plain_token": plain_token, "signature": signature})


@dataclass(frozen=True, slots=True)
class QQAdapter:
    bot_id: str
    app_id: str
    key: ECC.EccKey = field(repr=False)
    replay_window: float = 300.0

    @classmethod
    def from_bot(cls, bot: QQBot) -> QQAdapter:
        secret = bot.credentials.app_secret.get_secret_value()
        return cls(
            bot_id=bot.id,
            app_id=bot.credentials.app_id,
            key=ed25519.signing_key(qq_seed(secret)),
            replay_window=bot.replay_window_seconds,
        )

    def handle(self, request: CallbackRequest) -> CallbackResult:
        if request.method != "POST":
            raise ParseError("QQ callbacks are POST requests")
        appid = request.headers.get("x-bot-appid")
        if appid is not None and appid != self.app_id:
            raise VerifyError("callback for another app id")
        ts = request.headers.get("x-signature-timestamp") or ""
        ed25519.verify(
            self.key.public_key(),
            ts.encode("utf-8") + request.body,
            request.headers.get("x-signature-ed25519"),
        )
        check_timestamp(ts, request.now, self.replay_window)
        envelope = parse_model(Envelope, parse_json(request.body), "QQ payload")
        if envelope.op == 13:
            v = parse_model(Validation, envelope.d, "QQ validation request")
            return CallbackResult(
                body=validation_answer(self.key, v.plain_token, v.event_ts), content_type="application/json"
            )
        if envelope.op != 0:
            return CallbackResult(body=ACK, content_type="application/json")
        msg = normalize(envelope, self.bot_id, request.now)
        return CallbackResult(
            body=ACK,
            content_type="application/json",
            message=msg,
            dedupe_key=msg.platform_message_id if msg else None,
        )
