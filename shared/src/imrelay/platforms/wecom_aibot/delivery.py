"""WeCom AI bot delivery.

A stream shows at most 20480 bytes (UTF-8, of its ``content``), so an answer is cut into parts that fit
(:func:`~imrelay.delivery.chunking.split_utf8`: on a paragraph or line break near the limit where there is
one, never inside a character); every part but the last is final as soon as the answer has grown past it.

* Callback mode: the answer's first part is written into the message's stream record, which the ingress
  serves to WeCom's refresh polls — growing while the model writes, ``finish`` with the whole first part, so
  no poll answer is ever over the limit. The other parts go out through the message's ``response_url``,
  one markdown message each.
* Long-connection mode: the stream updates are sent as NATS requests (a
  :class:`~imrelay.events.ConnectionRequest` carrying a :class:`~.frames.StreamPart`) to the connector
  replica that owns the bot's socket (``imrelay.conn.wecom_aibot.<bot>``), which sends them on the socket
  and answers once WeCom acknowledged; no owner (a takeover in progress) is a transient failure, retried.
  Each part is a stream of its own on the message's ``req_id``: the first keeps the message's stream id,
  part *n* gets ``<id>-<n>``.
  A part is finished once, while the answer streams or at its end, whichever comes first (recorded in the
  deliveries bucket like every delivered part, so no replica finishes it again). The connector keeps
  streams alive while the model is silent (``connector.stream_keepalive_seconds``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from imrelay.answer_streams import CONTENT_LIMIT_BYTES, StreamStore
from imrelay.delivery import DeliveryContext, Requester
from imrelay.delivery.chunking import split_utf8
from imrelay.delivery.claims import Claim, DeliveryClaims
from imrelay.errors import PermanentUpstreamError, TransientUpstreamError
from imrelay.events import ConnectionRequest, ReplyChunk
from imrelay.platforms.wecom_aibot.config import WeComAIBot
from imrelay.platforms.wecom_aibot.handle import WeComAIBotHandle
from imrelay.subjects import kv_key

from ..wecom.delivery import post_json
from .frames import StreamPart

PLATFORM = "wecom_aibot"


def parts_of(text: str) -> list[str]:
    """The streams an answer is shown in, each within WeCom's limit; ``"".join`` gives the text back."""
    return split_utf8(text, CONTENT_LIMIT_BYTES) if text.strip() else [""]


def part_stream_id(sid: str, index: int) -> str:
    """The stream id of an answer's ``index``-th part: the message's own stream for the first."""
    return sid if index == 0 else f"{sid}-{index}"


@dataclass
class WeComAIBotDelivery:
    bot_id: str
    streams: StreamStore
    client: httpx.AsyncClient
    timeout: float
    platform: str = PLATFORM
    update_interval: float = 0.3  # WeCom polls about once a second; fresher is not seen
    requester: Requester | None = None  # set for long-connection bots
    claims: DeliveryClaims | None = None  # which parts are finished, shared by the sender replicas
    _finished: set[tuple[str, int]] = field(default_factory=set)  # the same, in-process (without claims)

    @classmethod
    def from_bot(cls, bot: WeComAIBot, ctx: DeliveryContext) -> WeComAIBotDelivery:
        if ctx.answer_streams is None:
            raise ValueError("a WeCom AI bot's delivery needs the answer streams store")
        claims = (
            DeliveryClaims(ctx.deliveries, stale_after=ctx.cfg.claim_timeout_seconds)
            if ctx.deliveries is not None
            else None
        )
        return cls(
            bot_id=bot.id,
            streams=ctx.answer_streams,
            client=ctx.client,
            timeout=ctx.http_timeout,
            requester=ctx.requester if bot.mode == "long_connection" else None,
            claims=claims,
        )

    async def _via_connector(self, chunk: ReplyChunk, index: int, content: str, finish: bool) -> None:
        assert self.requester is not None
        handle = WeComAIBotHandle.of(chunk)
        part = StreamPart(
            req_id=handle.req_id,
            stream_id=part_stream_id(self._sid(chunk), index),
            content=content,
            finish=finish,
            chatid=handle.chatid or chunk.recipient.id,
        )
        try:
            answer = await self.requester(
                ConnectionRequest(
                    platform=self.platform,
                    bot_id=self.bot_id,
                    payload=part.model_dump(),
                    timeout_seconds=self.timeout,
                )
            )
        except Exception as exc:
            raise TransientUpstreamError(PLATFORM, "connector", type(exc).__name__) from exc
        if not answer.ok:
            raise TransientUpstreamError(PLATFORM, str(answer.code), "not accepted on the socket")

    def render(self, chunk: ReplyChunk) -> list[str]:
        return parts_of(chunk.full_text if chunk.full_text is not None else chunk.delta)

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        return []

    def _sid(self, chunk: ReplyChunk) -> str:
        sid = WeComAIBotHandle.of(chunk).stream_id
        if not sid:
            raise PermanentUpstreamError(PLATFORM, "no_stream", "reply handle lacks the stream id")
        return sid

    async def update(self, chunk: ReplyChunk, text: str) -> None:
        parts = parts_of(text)
        if self.requester is None:
            await self.streams.put(self.bot_id, self._sid(chunk), parts[0], False)
            return
        for index, part in enumerate(parts[:-1]):  # the answer has grown past these: finish them
            if not await self._finish_part(chunk, index, part):
                return  # being finished by another replica right now: the next update goes on
        await self._via_connector(chunk, len(parts) - 1, parts[-1], False)

    async def _finish_part(self, chunk: ReplyChunk, index: int, part: str) -> bool:
        """Finish a full part while the answer still streams, once; False if another replica is at it."""
        if self.claims is None:
            if (chunk.reply_id, index) not in self._finished:
                await self._via_connector(chunk, index, part, True)
                self._finished.add((chunk.reply_id, index))
            return True
        record = kv_key("reply", chunk.reply_id, str(index))  # the record the final delivery checks
        claim = await self.claims.claim(record)
        if claim is Claim.DONE:
            return True
        if claim is Claim.BUSY:
            return False
        try:
            await self._via_connector(chunk, index, part, True)
        except BaseException:
            await self.claims.release(record, claim)
            raise
        await self.claims.done(record, claim)
        return True

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None:
        if self.requester is not None:
            if (chunk.reply_id, index) not in self._finished:
                await self._via_connector(chunk, index, part, True)
            return
        if index == 0:
            await self.streams.put(self.bot_id, self._sid(chunk), part, True)
            return
        url = WeComAIBotHandle.of(chunk).response_url
        if not url:
            raise PermanentUpstreamError(
                PLATFORM, "too_long", "answer exceeds the stream and no response_url came with the message"
            )
        await post_json(
            self.client,
            url,
            {"msgtype": "markdown", "markdown": {"content": part}},
            platform=PLATFORM,
            bot=self.bot_id,
            http_timeout=self.timeout,
        )
