"""The WeCom AI bot's long connection (``mode: long_connection``), as the connector runs it
(:mod:`imrelay.connections`).

WeCom allows one live socket per bot (``Ownership.SINGLE_OWNER``). The connection dials the bot's WebSocket,
subscribes with bot id + secret (``aibot_subscribe``; 853000 means a wrong bot id or secret:
:class:`~imrelay.connections.CredentialsRefused`), pings every ``connector.heartbeat_seconds`` (two
unanswered pings end the socket), and ends with :class:`~imrelay.connections.Kicked` when WeCom sends
``disconnected_event`` (a newer connection of the same bot replaced it). Messages and events are normalized
and stored; WeCom wants no acknowledgement of them.

Answers come from the sender (:class:`~.frames.StreamPart`): each is one ``aibot_respond_msg`` stream
update on the message's ``req_id``, sent one frame at a time per message, each waiting for WeCom's ack
(``connector.ack_timeout_seconds``). A stream shows at most 20480 bytes, so the sender cuts a long answer
into parts, each a stream of its own. An open stream the model is silent on is shown again, unchanged,
every ``connector.stream_keepalive_seconds`` so that WeCom does not expire it; a part finishing a stream
that is gone (the message came on a socket that is gone, or the stream expired) is sent as a markdown
message (``aibot_send_msg``) instead.

An answer's image comes as :class:`~.frames.MediaFrame` requests, one per frame of WeCom's upload
(``aibot_upload_media_init`` -> ``upload_id``, the chunks, ``aibot_upload_media_finish`` -> ``media_id``);
after the finish the image is sent on the message's ``req_id`` (after that message's earlier frames), or
to its chat when that socket or stream is gone. An upload this socket does not know (begun on an earlier
one) is refused; the sender starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from ...answer_streams import stream_id
from ...connections import CredentialsRefused, Health, Kicked, Sink
from ...events import ConnectionAnswer
from ...sections import ConnectorConfig
from .config import WeComAIBot
from .frames import GONE, INVALID_REQ_ID, WRONG_SECRET, MediaFrame, StreamPart, frame, req_id
from .ingress import normalize

log = logging.getLogger("imrelay.connector")
KEEPALIVE_GIVE_UP_SECONDS = 3600.0  # a stream the sender has not updated for this long is let go
KICK_SIGNAL = "disconnected_event"
FIX = "check credentials.bot_id and credentials.secret"


@dataclass
class OpenStream:
    """An answer stream shown on this socket and not finished yet."""

    content: str
    updated_at: float  # when the sender last updated it (monotonic)
    sent_at: float  # when it was last sent to WeCom, update or keepalive (monotonic)


@dataclass
class AIBotConnection:
    """One socket of one bot (the connector builds a new one to reconnect)."""

    bot: WeComAIBot
    cfg: ConnectorConfig
    acks: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reply_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    open_streams: dict[tuple[str, str], OpenStream] = field(default_factory=dict)  # (req_id, stream id)
    ws: ClientConnection | None = None
    health: Health | None = None
    # a message's frame whose ack did not come in time: its ack may still come, and must not be taken for
    # the ack of the message's next frame (acks name only the req_id)
    late_acks: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    uploads: dict[str, str] = field(default_factory=dict)  # the sender's name of an upload -> upload_id

    async def request(self, cmd: str, body: dict[str, Any], rid: str | None = None) -> dict[str, Any]:
        """Send one frame and wait for WeCom's ack frame (same req_id)."""
        ws = self.ws
        if ws is None:
            raise ConnectionError("no socket")
        rid = rid or req_id(cmd)
        late = self.late_acks.get(rid)
        if late is not None:  # let the late ack of the previous frame arrive first (or give up on it)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.ack_timeout_seconds):
                    await asyncio.shield(late)
            if self.late_acks.get(rid) is late:
                del self.late_acks[rid]
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[dict[str, Any]] = loop.create_future()
        key = f"{rid}#{secrets.token_hex(3)}"  # several frames may share a message's req_id
        self.acks[key] = waiter
        try:
            async with self.send_lock:
                await ws.send(frame(cmd, rid, body))
            async with asyncio.timeout(self.cfg.ack_timeout_seconds):
                return await waiter
        except TimeoutError:
            self.late_acks[rid] = loop.create_future()
            raise
        finally:
            self.acks.pop(key, None)

    def _resolve(self, msg: dict[str, Any]) -> None:
        rid = str((msg.get("headers") or {}).get("req_id", ""))
        late = self.late_acks.get(rid)
        if late is not None and not late.done():
            late.set_result(None)  # the ack of a frame that timed out: not the next frame's
            return
        for key, waiter in list(self.acks.items()):
            if key.split("#", 1)[0] == rid and not waiter.done():
                waiter.set_result(msg)
                return

    async def run(self, sink: Sink, health: Health) -> None:
        """Dial, subscribe, and serve until the socket ends (raises Kicked when replaced)."""
        self.health = health
        async with connect(
            self.bot.ws_url, open_timeout=10, ping_interval=None, max_size=4 * 1024 * 1024
        ) as ws:
            self.ws = ws
            reader = asyncio.create_task(self._read(ws, sink))
            try:
                c = self.bot.credentials
                ack = await self.request(
                    "aibot_subscribe",
                    {"bot_id": c.bot_id, "secret": c.secret.get_secret_value() if c.secret else ""},
                )
                if ack.get("errcode") == WRONG_SECRET:
                    raise CredentialsRefused(f"errcode {ack.get('errcode')} {ack.get('errmsg')}", FIX)
                if ack.get("errcode") != 0:
                    raise PermissionError(f"subscribe refused: {ack.get('errcode')} {ack.get('errmsg')}")
                log.info("bot %s: long connection up", self.bot.id)
                await health.up()
                beat = asyncio.create_task(self._heartbeat())
                keep = asyncio.create_task(self._keep_streams_alive())
                try:  # whichever ends first (each ends only by raising) ends the socket
                    done, _ = await asyncio.wait({reader, beat, keep}, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        t.result()
                finally:
                    for task in (beat, keep):
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
                self.ws = None

    async def _heartbeat(self) -> None:
        missed = 0
        while True:
            await asyncio.sleep(self.cfg.heartbeat_seconds)
            try:
                await self.request("ping", {})
                missed = 0
            except TimeoutError:
                missed += 1
                if missed >= 2:
                    raise ConnectionError("heartbeat unanswered") from None

    async def _keep_streams_alive(self) -> None:
        """Show each open stream again, unchanged, once it has not been sent for
        ``stream_keepalive_seconds``, so that a model pausing longer than WeCom's expiry loses nothing."""
        every = self.cfg.stream_keepalive_seconds
        while True:
            await asyncio.sleep(min(every / 4, 5.0))
            now = time.monotonic()
            for key, stream in list(self.open_streams.items()):
                if now - stream.updated_at > KEEPALIVE_GIVE_UP_SECONDS:
                    self.open_streams.pop(key, None)
                elif now - stream.sent_at >= every:
                    await self._keepalive(key, stream)

    async def _keepalive(self, key: tuple[str, str], stream: OpenStream) -> None:
        rid, sid = key
        async with self.reply_locks.setdefault(rid, asyncio.Lock()):
            if self.open_streams.get(key) is not stream:
                return  # updated or finished meanwhile
            try:
                ack = await self.request(
                    "aibot_respond_msg",
                    {"msgtype": "stream", "stream": {"id": sid, "finish": False, "content": stream.content}},
                    rid=rid,
                )
            except Exception as exc:  # the next round tries again; a dead socket ends the loop anyway
                log.info("bot %s: stream keepalive not sent (%s)", self.bot.id, type(exc).__name__)
                return
        if ack.get("errcode") == 0:
            stream.sent_at = time.monotonic()
            if self.health is not None:
                self.health.event("stream_keepalive")
        else:
            self.open_streams.pop(key, None)
            log.info("bot %s: stream keepalive refused (%s); letting it go", self.bot.id, ack.get("errcode"))

    async def _read(self, ws: ClientConnection, sink: Sink) -> None:
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            cmd = msg.get("cmd")
            if cmd is None:
                self._resolve(msg)
            elif (
                cmd == "aibot_event_callback"
                and ((msg.get("body") or {}).get("event") or {}).get("eventtype") == KICK_SIGNAL
            ):
                raise Kicked(KICK_SIGNAL)
            elif cmd in ("aibot_msg_callback", "aibot_event_callback"):
                await self._inbound(msg, sink)
        raise ConnectionError("socket closed")

    async def _inbound(self, msg: dict[str, Any], sink: Sink) -> None:
        body = msg.get("body") or {}
        rid = str((msg.get("headers") or {}).get("req_id", ""))
        try:
            inbound = normalize(
                body, self.bot.id, time.time(), stream_id(self.bot.id, str(body.get("msgid", ""))), req_id=rid
            )
        except Exception as exc:
            log.warning("bot %s: unreadable frame (%s)", self.bot.id, type(exc).__name__)
            return
        try:
            await sink(inbound)
        except Exception as exc:
            log.error(
                "bot %s: message %s not stored (%s)",
                self.bot.id,
                inbound.platform_message_id,
                type(exc).__name__,
            )

    async def send(self, payload: dict[str, Any]) -> ConnectionAnswer:
        """A stream update from the sender: send it on the socket; the answer says whether WeCom took it."""
        if "op" in payload:
            return await self._media(MediaFrame.model_validate(payload))
        part = StreamPart.model_validate(payload)
        rid, key, finish = part.req_id, (part.req_id, part.stream_id), part.finish
        lock = self.reply_locks.setdefault(rid, asyncio.Lock())
        async with lock:  # one message's frames go one at a time, each acked
            ack = await self.request(
                "aibot_respond_msg",
                {"msgtype": "stream", "stream": {"id": key[1], "finish": finish, "content": part.content}},
                rid=rid,
            )
            if ack.get("errcode") == 0 and not finish:
                now = time.monotonic()
                self.open_streams[key] = OpenStream(part.content, updated_at=now, sent_at=now)
            elif ack.get("errcode") == 0 or ack.get("errcode") in GONE:
                self.open_streams.pop(key, None)
            if ack.get("errcode") in GONE and finish:
                # the message came on a socket that is gone, or its stream expired: send this part of the
                # answer proactively
                ack = await self.request(
                    "aibot_send_msg",
                    {"chatid": part.chatid, "msgtype": "markdown", "markdown": {"content": part.content}},
                )
        if finish:
            self.reply_locks.pop(rid, None)
            self.late_acks.pop(rid, None)
        ok = ack.get("errcode") == 0 or ack.get("errcode") in GONE  # an update of a lost stream is moot
        return ConnectionAnswer(ok=ok, code=ack.get("errcode"))

    async def _media(self, step: MediaFrame) -> ConnectionAnswer:
        """One step of sending an answer's image (see the module's description)."""
        if step.op == "upload_init":
            ack = await self.request("aibot_upload_media_init", step.body)
            upload_id = (ack.get("body") or {}).get("upload_id")
            if ack.get("errcode") == 0 and upload_id:
                self.uploads[step.upload] = str(upload_id)
            return ConnectionAnswer(ok=ack.get("errcode") == 0 and bool(upload_id), code=ack.get("errcode"))
        upload_id = self.uploads.get(step.upload)
        if upload_id is None:
            return ConnectionAnswer(ok=False, code="unknown_upload")
        if step.op == "upload_chunk":
            ack = await self.request("aibot_upload_media_chunk", {"upload_id": upload_id, **step.body})
            return ConnectionAnswer(ok=ack.get("errcode") == 0, code=ack.get("errcode"))
        self.uploads.pop(step.upload, None)
        ack = await self.request("aibot_upload_media_finish", {"upload_id": upload_id})
        media_id = (ack.get("body") or {}).get("media_id")
        if ack.get("errcode") != 0 or not media_id:
            return ConnectionAnswer(ok=False, code=ack.get("errcode"))
        image = {"msgtype": "image", "image": {"media_id": str(media_id)}}
        ack = {"errcode": INVALID_REQ_ID}
        if step.req_id:
            async with self.reply_locks.setdefault(step.req_id, asyncio.Lock()):
                ack = await self.request("aibot_respond_msg", image, rid=step.req_id)
            if step.req_id in self.reply_locks and not self.reply_locks[step.req_id].locked():
                self.reply_locks.pop(step.req_id, None)
        if ack.get("errcode") in GONE:  # its message's socket or stream is gone: to the chat instead
            ack = await self.request("aibot_send_msg", {"chatid": step.chatid, **image})
        return ConnectionAnswer(ok=ack.get("errcode") == 0, code=ack.get("errcode"))
