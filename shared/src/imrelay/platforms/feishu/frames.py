"""The Feishu / Lark long connection's frames (protobuf ``pbbp2``, proto2), encoded and decoded by hand, and
the pure parts of the protocol around them: multi-part payloads, the server's ``ClientConfig``, the stale
check.

A small varint codec rather than the ``protobuf`` runtime: the schema is two messages of nine and two
fields, the runtime would need generated code (or a descriptor built at import) and typing stubs, and it is
only a transitive dependency here. Written by hand, proto2's rule is explicit: ``SeqID``, ``LogID``,
``service``, ``method`` and ``Header.key/value`` are **required**, so they are written even when zero (a
ping has SeqID = LogID = 0 on the wire) and a frame lacking one is refused when decoded, as the protobuf
runtime refuses it.

::

    message Header { required string key = 1; required string value = 2; }
    message Frame {
      required uint64 SeqID = 1; required uint64 LogID = 2; required int32 service = 3;
      required int32 method = 4; repeated Header headers = 5; optional string payload_encoding = 6;
      optional string payload_type = 7; optional bytes payload = 8; optional string LogIDNew = 9;
    }
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

CONTROL, DATA = 0, 1  # Frame.method
PING, PONG, EVENT, CARD = "ping", "pong", "event", "card"  # header "type"
OK_CODES = (0,)
RETRYABLE_CODES = (1, 1000040343)  # endpoint discovery: system busy, internal error
AUTH_FAILED, FORBIDDEN = 514, 403  # handshake-status
TOO_MANY_CONNECTIONS = 1000040350  # handshake-autherrcode: the app's connection limit
HANDSHAKE_STATUS, HANDSHAKE_MSG, HANDSHAKE_AUTH_ERRCODE = (
    "handshake-status",
    "handshake-msg",
    "handshake-autherrcode",
)
MAX_PARTS = 64  # a payload announced in more parts than this is refused (memory)

_U64 = (1 << 64) - 1


class FrameError(ValueError):
    """Bytes that are not a valid ``pbbp2.Frame``."""


@dataclass(frozen=True, slots=True)
class Frame:
    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = CONTROL
    headers: tuple[tuple[str, str], ...] = ()
    payload_encoding: str | None = None
    payload_type: str | None = None
    payload: bytes | None = None
    log_id_new: str | None = None

    def header(self, key: str, default: str = "") -> str:
        for k, v in self.headers:
            if k == key:
                return v
        return default

    def with_header(self, key: str, value: str) -> Frame:
        return replace(self, headers=(*self.headers, (key, value)))


# ---- wire format ------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= _U64  # negative int32/int64 are written as their 64-bit two's complement (10 bytes)
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _key(number, 2) + _varint(len(data)) + data


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def encode(frame: Frame) -> bytes:
    out = bytearray()
    out += _key(1, 0) + _varint(frame.seq_id)
    out += _key(2, 0) + _varint(frame.log_id)
    out += _key(3, 0) + _varint(_int32(frame.service))
    out += _key(4, 0) + _varint(_int32(frame.method))
    for k, v in frame.headers:
        out += _bytes_field(5, _bytes_field(1, k.encode()) + _bytes_field(2, v.encode()))
    if frame.payload_encoding is not None:
        out += _bytes_field(6, frame.payload_encoding.encode())
    if frame.payload_type is not None:
        out += _bytes_field(7, frame.payload_type.encode())
    if frame.payload is not None:
        out += _bytes_field(8, frame.payload)
    if frame.log_id_new is not None:
        out += _bytes_field(9, frame.log_id_new.encode())
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise FrameError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result > _U64:
                raise FrameError("varint too long")
            return result, pos
        shift += 7
        if shift >= 70:
            raise FrameError("varint too long")


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of every field; unknown wire types 1 and 5 are read and kept."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise FrameError("field number 0")
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise FrameError("truncated field")
            value, pos = data[pos : pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(data):
                raise FrameError("truncated field")
            value, pos = data[pos : pos + size], pos + size
        else:
            raise FrameError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def _text(value: int | bytes, name: str) -> str:
    if not isinstance(value, bytes):
        raise FrameError(f"{name} is not length-delimited")
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise FrameError(f"{name} is not UTF-8") from exc


def _number(value: int | bytes, name: str) -> int:
    if not isinstance(value, int):
        raise FrameError(f"{name} is not a varint")
    return value


def _header(data: bytes) -> tuple[str, str]:
    key = value = None
    for number, _, v in _fields(data):
        if number == 1:
            key = _text(v, "Header.key")
        elif number == 2:
            value = _text(v, "Header.value")
    if key is None or value is None:
        raise FrameError("Header lacks its required key or value")
    return key, value


def decode(data: bytes) -> Frame:
    """A frame from its bytes; a frame lacking a required field is refused (proto2)."""
    seen: dict[int, Any] = {}
    headers: list[tuple[str, str]] = []
    for number, _, value in _fields(data):
        if number == 5:
            if not isinstance(value, bytes):
                raise FrameError("Frame.headers is not length-delimited")
            headers.append(_header(value))
        elif number in (1, 2):
            seen[number] = _number(value, "SeqID/LogID")
        elif number in (3, 4):
            seen[number] = _int32(_number(value, "service/method"))
        elif number == 8:
            if not isinstance(value, bytes):
                raise FrameError("Frame.payload is not length-delimited")
            seen[number] = value
        elif number in (6, 7, 9):
            seen[number] = _text(value, f"field {number}")
    missing = [
        name for n, name in ((1, "SeqID"), (2, "LogID"), (3, "service"), (4, "method")) if n not in seen
    ]
    if missing:
        raise FrameError(f"Frame lacks required {', '.join(missing)}")
    return Frame(
        seq_id=seen[1],
        log_id=seen[2],
        service=seen[3],
        method=seen[4],
        headers=tuple(headers),
        payload_encoding=seen.get(6),
        payload_type=seen.get(7),
        payload=seen.get(8),
        log_id_new=seen.get(9),
    )


# ---- the protocol's frames --------------------------------------------------------------------------------


def ping(service_id: int) -> Frame:
    return Frame(service=service_id, method=CONTROL, headers=(("type", PING),))


def pong(frame: Frame, config: ClientConfig | None = None) -> Frame:
    """The server's answer to a ping (optionally carrying the client's configuration)."""
    payload = config.wire() if config is not None else None
    return Frame(
        seq_id=frame.seq_id,
        log_id=frame.log_id,
        service=frame.service,
        method=CONTROL,
        headers=(("type", PONG),),
        payload=payload,
    )


def ack(frame: Frame, code: int = 200, biz_rt_ms: int | None = None) -> Frame:
    """The answer to a data frame: the same frame back with ``{"code": …}`` as payload (and ``biz_rt``, the
    milliseconds spent, on success)."""
    out = frame if biz_rt_ms is None else frame.with_header("biz_rt", str(biz_rt_ms))
    return replace(out, payload=json.dumps({"code": code}).encode())


def ack_code(frame: Frame) -> int | None:
    """The code of an ack frame's payload (None when it carries none)."""
    try:
        value = json.loads(frame.payload or b"")
    except ValueError:
        return None
    code = value.get("code") if isinstance(value, dict) else None
    return code if isinstance(code, int) else None


class ClientConfig(BaseModel):
    """What the server tells the client to do (endpoint discovery, and pongs): the client's defaults."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    reconnect_count: int = Field(default=-1, alias="ReconnectCount")  # -1: forever
    reconnect_interval: float = Field(default=120, alias="ReconnectInterval", ge=0)  # s between retries
    reconnect_nonce: float = Field(default=30, alias="ReconnectNonce", ge=0)  # jitter before the first
    ping_interval: float = Field(default=120, alias="PingInterval", gt=0)  # s between pings

    def wire(self) -> bytes:
        """The JSON the server sends (its own spelling)."""
        return self.model_dump_json(by_alias=True).encode()


def parse_client_config(payload: bytes | None) -> ClientConfig | None:
    """A pong's ClientConfig (None when the pong carries none or it is unreadable)."""
    if not payload:
        return None
    try:
        return ClientConfig.model_validate_json(payload)
    except ValueError:
        return None


# ---- multi-part payloads ----------------------------------------------------------------------------------


@dataclass
class _Parts:
    parts: list[bytes | None]
    expires: float


@dataclass
class Reassembly:
    """Payloads sent in ``sum`` parts (headers ``message_id``, ``sum``, ``seq``: the 0-based index) are put
    together; parts of a payload not completed within ``ttl`` seconds are dropped (the server re-sends an
    event it got no ack for)."""

    ttl: float = 5.0
    pending: dict[str, _Parts] = field(default_factory=dict)

    def add(self, frame_message_id: str, total: int, seq: int, payload: bytes, now: float) -> bytes | None:
        """The whole payload once this part completes it, else None."""
        if total <= 1:
            return payload
        if total > MAX_PARTS or not 0 <= seq < total:
            raise FrameError(f"part {seq} of {total} out of range")
        for key in [k for k, v in self.pending.items() if v.expires <= now]:
            del self.pending[key]
        entry = self.pending.get(frame_message_id)
        if entry is None or len(entry.parts) != total:
            entry = self.pending[frame_message_id] = _Parts([None] * total, now + self.ttl)
        entry.parts[seq] = payload
        if any(p is None for p in entry.parts):
            return None
        del self.pending[frame_message_id]
        return b"".join(p for p in entry.parts if p is not None)


def split(payload: bytes, parts: int) -> list[bytes]:
    """``payload`` in ``parts`` pieces (the simulator sends large events this way)."""
    size = -(-len(payload) // parts) if payload else 0
    return [payload[i * size : (i + 1) * size] for i in range(parts)]


def is_stale(create_time_ms: str | int | None, now: float, window: float) -> bool:
    """An event created more than ``window`` seconds before ``now`` (a re-push after a reconnect, hours
    later) is stale; an event without a readable creation time is not."""
    if window <= 0 or create_time_ms in (None, ""):
        return False
    try:
        created = int(str(create_time_ms)) / 1000
    except ValueError:
        return False
    return now - created > window
