"""DingTalk Stream mode's wire format, as pure functions: the ``connections/open`` request, the frames the
gateway sends (JSON text ``{specVersion, type, headers, data}`` with ``data`` a JSON string), and the acks
the client answers them with (``{code, headers: {messageId, contentType}, message, data}``).

Only ``code`` and ``headers.messageId`` of an ack matter to the gateway; a ``ping`` ack echoes the frame's
``data`` (``{"opaque": …}``); a robot message's ack carries ``{"response": null}``; an event's ack
``{"status": "SUCCESS"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ...errors import ParseError

__all__ = [
    "OPEN_PATH",
    "TOPIC_ROBOT",
    "Frame",
    "ack",
    "open_request",
    "parse_frame",
    "robot_message",
]

OPEN_PATH = "/v1.0/gateway/connections/open"
TOPIC_ROBOT = "/v1.0/im/bot/messages/get"
TOPIC_PING = "ping"
TOPIC_DISCONNECT = "disconnect"
SYSTEM, EVENT, CALLBACK = "SYSTEM", "EVENT", "CALLBACK"
USER_AGENT = "imrelay-dingtalk-stream/1"


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame from the gateway."""

    type: str  # SYSTEM | EVENT | CALLBACK
    topic: str
    message_id: str
    data: str  # the raw JSON string of ``data``
    headers: dict[str, Any] = field(default_factory=dict)

    @property
    def is_ping(self) -> bool:
        return self.type == SYSTEM and self.topic == TOPIC_PING

    @property
    def is_disconnect(self) -> bool:
        return self.type == SYSTEM and self.topic == TOPIC_DISCONNECT

    @property
    def is_robot_message(self) -> bool:
        return self.type == CALLBACK and self.topic == TOPIC_ROBOT


def open_request(client_id: str, client_secret: str, local_ip: str = "") -> dict[str, Any]:
    """The body of ``POST {api}/v1.0/gateway/connections/open``: robot messages only (subscribing to
    every event would take events other clients of the same app are waiting for)."""
    return {
        "clientId": client_id,
        "clientSecret": client_secret,
        "subscriptions": [{"type": CALLBACK, "topic": TOPIC_ROBOT}],
        "ua": USER_AGENT,
        "localIp": local_ip,
    }


def parse_frame(raw: str | bytes) -> Frame:
    """A gateway frame; :class:`ParseError` when it is not one."""
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError("frame is not JSON") from exc
    if not isinstance(msg, dict):
        raise ParseError("frame is not an object")
    headers = msg.get("headers")
    if not isinstance(headers, dict):
        raise ParseError("frame has no headers")
    kind, topic, mid = msg.get("type"), headers.get("topic"), headers.get("messageId")
    if kind not in (SYSTEM, EVENT, CALLBACK):
        raise ParseError(f"unknown frame type {str(kind)[:20]!r}")
    if not isinstance(topic, str) or not isinstance(mid, str) or not mid:
        raise ParseError("frame lacks topic or messageId")
    data = msg.get("data", "")
    if not isinstance(data, str):
        data = json.dumps(data, ensure_ascii=False)  # lenient: an object where a JSON string belongs
    return Frame(type=kind, topic=topic, message_id=mid, data=data, headers=headers)


def robot_message(frame: Frame) -> dict[str, Any]:
    """The robot message a CALLBACK frame carries (the same JSON as an HTTP-mode callback's body)."""
    try:
        body = json.loads(frame.data)
    except ValueError as exc:
        raise ParseError("robot message data is not JSON") from exc
    if not isinstance(body, dict):
        raise ParseError("robot message data is not an object")
    return body


def ack(frame: Frame, code: int = 200, message: str = "OK") -> str:
    """The answer to ``frame``: a ping's echoes its ``data`` (the opaque), a robot message's carries
    ``{"response": null}``, an event's ``{"status": "SUCCESS"}``."""
    if frame.type == SYSTEM:
        data = frame.data
    elif frame.type == EVENT:
        data = json.dumps({"status": "SUCCESS", "message": "success"})
    else:
        data = json.dumps({"response": None})
    return json.dumps(
        {
            "code": code,
            "headers": {"messageId": frame.message_id, "contentType": "application/json"},
            "message": message,
            "data": data,
        },
        ensure_ascii=False,
    )
