"""The Feishu long connection's pure parts: the pbbp2 codec (checked against the protobuf runtime itself),
multi-part payloads, the server's ClientConfig, the stale check, discovery answers, refused handshakes and
the reconnect pause."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imrelay.connections import CredentialsRefused
from imrelay.platforms.feishu import frames
from imrelay.platforms.feishu.connection import Redial, discovery_result, handshake_refusal
from imrelay.platforms.feishu.frames import ClientConfig, Frame, FrameError, Reassembly


def pbbp2_frame_class() -> Any:
    """``pbbp2.Frame`` built by the protobuf runtime from the schema (proto2, required fields)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]

    f = descriptor_pb2.FileDescriptorProto(name="pbbp2_test.proto", package="pbbp2", syntax="proto2")
    req, opt, rep = (
        descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED,
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    t = descriptor_pb2.FieldDescriptorProto
    header = f.message_type.add(name="Header")
    header.field.add(name="key", number=1, label=req, type=t.TYPE_STRING)
    header.field.add(name="value", number=2, label=req, type=t.TYPE_STRING)
    frame = f.message_type.add(name="Frame")
    for name, number, label, kind in (
        ("SeqID", 1, req, t.TYPE_UINT64),
        ("LogID", 2, req, t.TYPE_UINT64),
        ("service", 3, req, t.TYPE_INT32),
        ("method", 4, req, t.TYPE_INT32),
        ("payload_encoding", 6, opt, t.TYPE_STRING),
        ("payload_type", 7, opt, t.TYPE_STRING),
        ("payload", 8, opt, t.TYPE_BYTES),
        ("LogIDNew", 9, opt, t.TYPE_STRING),
    ):
        frame.field.add(name=name, number=number, label=label, type=kind)
    frame.field.add(name="headers", number=5, label=rep, type=t.TYPE_MESSAGE, type_name=".pbbp2.Header")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pbbp2.Frame"))


def test_a_ping_is_what_the_protobuf_runtime_writes_zero_required_fields_included() -> None:
    cls = pbbp2_frame_class()
    ours = frames.encode(frames.ping(7))
    theirs = cls(SeqID=0, LogID=0, service=7, method=0)
    h = theirs.headers.add()
    h.key, h.value = "type", "ping"
    assert ours == theirs.SerializeToString()
    assert ours.startswith(b"\x08\x00\x10\x00")  # SeqID = 0 and LogID = 0 are on the wire


def test_a_data_frame_round_trips_through_the_protobuf_runtime() -> None:
    cls = pbbp2_frame_class()
    frame = Frame(
        seq_id=2**40 + 5,
        log_id=300,
        service=-2,  # int32: ten bytes on the wire
        method=frames.DATA,
        headers=(("type", "event"), ("message_id", "m1"), ("sum", "1"), ("seq", "0"), ("trace_id", "t")),
        payload_type="json",
        payload='{"schema":"2.0","text":"你好"}'.encode(),
        log_id_new="n",
    )
    parsed = cls()
    parsed.ParseFromString(frames.encode(frame))
    assert parsed.SeqID == frame.seq_id and parsed.service == -2 and parsed.payload == frame.payload
    assert [(h.key, h.value) for h in parsed.headers] == list(frame.headers)
    assert not parsed.HasField("payload_encoding")
    assert frames.decode(parsed.SerializeToString()) == frame


def test_a_frame_lacking_a_required_field_or_truncated_is_refused() -> None:
    whole = frames.encode(frames.ping(1))
    with pytest.raises(FrameError, match="SeqID"):
        frames.decode(whole[2:])  # what an encoder skipping zero values writes
    with pytest.raises(FrameError):
        frames.decode(whole[:-1])
    with pytest.raises(FrameError):
        frames.decode(b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
    unknown = whole + b"\x58\x01"  # field 11, a varint: skipped
    assert frames.decode(unknown) == frames.ping(1)


def test_an_ack_is_the_same_frame_with_code_200_and_the_time_spent() -> None:
    frame = Frame(
        seq_id=9, method=frames.DATA, headers=(("type", "event"), ("message_id", "m")), payload=b"{}"
    )
    ack = frames.ack(frame, 200, 12)
    assert ack.seq_id == 9 and ack.header("message_id") == "m" and ack.header("biz_rt") == "12"
    assert json.loads(ack.payload or b"") == {"code": 200} and frames.ack_code(ack) == 200


def test_a_pong_carries_the_client_config_in_the_servers_spelling() -> None:
    config = ClientConfig(ReconnectCount=-1, ReconnectInterval=5, ReconnectNonce=2, PingInterval=9)
    pong = frames.decode(frames.encode(frames.pong(frames.ping(3), config)))
    assert pong.header("type") == "pong"
    assert json.loads(pong.payload or b"")["PingInterval"] == 9
    assert frames.parse_client_config(pong.payload) == config
    assert frames.parse_client_config(b"") is None and frames.parse_client_config(b"nope") is None


def test_parts_are_put_together_by_frame_message_id_in_seq_order() -> None:
    r = Reassembly(ttl=5)
    payload = b'{"event": "a long one"}'
    pieces = frames.split(payload, 3)
    assert r.add("m", 3, 2, pieces[2], now=0) is None
    assert r.add("other", 2, 0, b"x", now=0) is None
    assert r.add("m", 3, 0, pieces[0], now=1) is None
    assert r.add("m", 3, 1, pieces[1], now=2) == payload
    assert "m" not in r.pending
    assert r.add("single", 1, 0, b"whole", now=3) == b"whole"
    assert r.add("late", 2, 0, b"a", now=10) is None and "other" not in r.pending  # expired parts dropped
    with pytest.raises(FrameError):
        r.add("m", 3, 3, b"", now=0)
    with pytest.raises(FrameError):
        r.add("m", frames.MAX_PARTS + 1, 0, b"", now=0)


def test_an_event_older_than_the_window_is_stale() -> None:
    now = 1_000_000.0
    assert frames.is_stale(str(int((now - 1801) * 1000)), now, 1800)
    assert not frames.is_stale(str(int((now - 60) * 1000)), now, 1800)
    assert not frames.is_stale(int((now - 9999) * 1000), now, 0)  # 0: off
    assert not frames.is_stale(None, now, 1800) and not frames.is_stale("x", now, 1800)


def test_discovery_answers() -> None:
    url, config = discovery_result(
        200,
        {
            "code": 0,
            "data": {"URL": "wss://x/ws?device_id=d&service_id=1", "ClientConfig": {"PingInterval": 5}},
        },
    )
    assert url.startswith("wss://") and config is not None and config.ping_interval == 5
    for busy in (1, 1000040343):
        with pytest.raises(ConnectionError):
            discovery_result(200, {"code": busy, "msg": "busy"})
    with pytest.raises(CredentialsRefused):
        discovery_result(200, {"code": 10014, "msg": "app secret invalid"})
    with pytest.raises(ConnectionError):
        discovery_result(502, None)


def test_a_refused_handshake_says_what_to_fix() -> None:
    too_many = handshake_refusal(
        {"handshake-status": "514", "handshake-msg": "exceed", "handshake-autherrcode": "1000040350"}, 400
    )
    assert isinstance(too_many, CredentialsRefused) and "50 long connections" in too_many.fix
    assert isinstance(
        handshake_refusal({"handshake-status": "403", "handshake-msg": "no"}, 400), CredentialsRefused
    )
    assert (
        type(handshake_refusal({"handshake-status": "514", "handshake-msg": "ticket"}, 400))
        is ConnectionError
    )
    assert type(handshake_refusal({}, 502)) is ConnectionError


def test_reconnect_pause_follows_the_servers_settings() -> None:
    r = Redial()
    assert r.pause(100.0) == 0.0  # first attempt
    r.ended_at, r.was_up = 100.0, True
    assert r.pause(101.0, rand=lambda: 0.5) == 0.0  # no settings from the server yet: the connector's backoff
    r.config = ClientConfig(ReconnectInterval=10, ReconnectNonce=4)
    assert (
        r.pause(101.0, rand=lambda: 0.5) == 1.0
    )  # after a connection that was up: jitter, time passed counts
    r.was_up = False
    assert r.pause(103.0) == 7.0  # after a failed attempt: the interval
    assert r.pause(200.0) == 0.0


def test_a_long_connection_bot_needs_only_the_app_id_and_secret() -> None:
    from pydantic import ValidationError

    from imrelay.platforms.feishu.config import FeishuBot

    creds = {"app_id": "cli_x", "app_secret": "s"}
    bot = FeishuBot.model_validate(
        {"id": "b", "platform": "lark", "mode": "long_connection", "credentials": creds}
    )
    assert bot.stale_after_seconds == 1800 and bot.start_warnings() == []
    with pytest.raises(ValidationError, match="Verification Token is required"):
        FeishuBot.model_validate(
            {"id": "b", "platform": "feishu", "credentials": creds | {"encrypt_key": "k"}}
        )
    with pytest.raises(ValidationError, match="app_id and app_secret"):
        FeishuBot.model_validate(
            {
                "id": "b",
                "platform": "feishu",
                "mode": "long_connection",
                "credentials": {"app_id": "", "app_secret": ""},
            }
        )
