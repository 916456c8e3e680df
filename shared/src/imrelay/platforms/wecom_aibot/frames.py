"""The long connection's frames, and what the sender asks the connector to send on it (the payload of an
:class:`~imrelay.events.ConnectionRequest`): light, so the sender imports it without the socket code."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

INVALID_REQ_ID = 846605
STREAM_EXPIRED = 846608
GONE = (INVALID_REQ_ID, STREAM_EXPIRED)  # the message's socket or stream is gone: later frames are moot
WRONG_SECRET = 853000


class StreamPart(BaseModel):
    """One update of one answer stream on the message's ``req_id``; a ``finish`` update of a stream that is
    gone is sent as a markdown message to ``chatid`` instead."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    req_id: str
    stream_id: str
    content: str
    finish: bool
    chatid: str = ""


class MediaFrame(BaseModel):
    """One step of sending an answer's image on the socket: ``upload_init`` (``body``: type, filename,
    total_size, total_chunks, md5), each ``upload_chunk`` (``body``: chunk_index, base64_data), then
    ``upload_finish``, after which the connector replies on the message's ``req_id`` with the image (or sends
    it to ``chatid`` when that message's socket or stream is gone). ``upload`` is the sender's name for the
    upload; the connector keeps WeCom's ``upload_id`` under it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    op: Literal["upload_init", "upload_chunk", "upload_finish"]
    upload: str
    body: dict[str, Any] = {}
    req_id: str = ""
    chatid: str = ""


def req_id(kind: str) -> str:
    return f"{kind}_{int(time.time() * 1000)}_{secrets.token_hex(4)}"


def frame(cmd: str, rid: str, body: dict[str, Any] | None = None) -> str:
    out: dict[str, Any] = {"cmd": cmd, "headers": {"req_id": rid}}
    if body is not None:
        out["body"] = body
    return json.dumps(out, ensure_ascii=False)
