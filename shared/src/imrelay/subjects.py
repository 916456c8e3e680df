"""Every NATS name imrelay uses: streams, subjects, consumers, KV buckets and headers.

=================  ===============================  =====================================================
name               value                            what
=================  ===============================  =====================================================
STREAM_IN          IMRELAY_IN                       normalized inbound events, ``imrelay.in.<platform>.<bot>``
STREAM_OUT         IMRELAY_OUT                      reply chunks, ``imrelay.out.<platform>.<bot>.<partition>``
STREAM_DLQ         IMRELAY_DLQ                      dead letters, ``imrelay.dlq.<stage>``, reason in headers
CONSUMER_WORKER    llm-worker                       durable pull consumer of IMRELAY_IN
CONSUMER_SENDER    sender-p<k>                      durable pull consumers of IMRELAY_OUT, one a partition
KV_TOKENS          imrelay_tokens                   platform access tokens shared by replicas
KV_MEMORY          imrelay_memory                   conversation memory
KV_LEASES          imrelay_leases                   connector socket leases
KV_DELIVERIES      imrelay_deliveries               reply parts and messages answered (idempotency)
KV_REPLAY          imrelay_replay                   signatures seen once (timestamp-signed callback headers)
OBJ_MEDIA          imrelay_media                    Object Store: media bytes that events refer to (TTL)
=================  ===============================  =====================================================
"""

from __future__ import annotations

import re
import zlib

STREAM_IN = "IMRELAY_IN"
STREAM_OUT = "IMRELAY_OUT"
STREAM_DLQ = "IMRELAY_DLQ"

IN_PREFIX = "imrelay.in"
OUT_PREFIX = "imrelay.out"
DLQ_PREFIX = "imrelay.dlq"

IN_ALL = f"{IN_PREFIX}.>"
OUT_ALL = f"{OUT_PREFIX}.>"
DLQ_ALL = f"{DLQ_PREFIX}.>"

CONSUMER_WORKER = "llm-worker"
CONSUMER_SENDER = "sender"

KV_TOKENS = "imrelay_tokens"
KV_MEMORY = "imrelay_memory"
KV_LEASES = "imrelay_leases"
KV_DELIVERIES = "imrelay_deliveries"
KV_RATELIMITS = "imrelay_ratelimits"
KV_STREAMS = "imrelay_streams"
KV_REPLAY = "imrelay_replay"
OBJ_MEDIA = "imrelay_media"  # Object Store: media bytes, referred to by events

# Headers
HDR_MSG_ID = "Nats-Msg-Id"
HDR_DLQ_REASON = "Imrelay-Dlq-Reason"
HDR_DLQ_STAGE = "Imrelay-Dlq-Stage"
HDR_DLQ_CODE = "Imrelay-Dlq-Code"
HDR_DLQ_SUBJECT = "Imrelay-Dlq-Original-Subject"
HDR_DLQ_DELIVERIES = "Imrelay-Dlq-Deliveries"

_TOKEN_RE = re.compile(r"^[a-z0-9_-]+$")


def _token(value: str) -> str:
    if not _TOKEN_RE.match(value):
        raise ValueError(f"not a valid subject token: {value!r}")
    return value


def inbound_subject(platform: str, bot_id: str) -> str:
    return f"{IN_PREFIX}.{_token(platform)}.{_token(bot_id)}"


def partition_of(conversation: str, partitions: int) -> int:
    """The stable partition of a conversation (CRC-32, the same in every process and version)."""
    return zlib.crc32(conversation.encode("utf-8")) % partitions


def outbound_subject(platform: str, bot_id: str, partition: int) -> str:
    return f"{OUT_PREFIX}.{_token(platform)}.{_token(bot_id)}.{partition}"


def outbound_partition_filter(partition: int) -> str:
    return f"{OUT_PREFIX}.*.*.{partition}"


def sender_consumer(partition: int) -> str:
    return f"{CONSUMER_SENDER}-p{partition}"


CONN_PREFIX = "imrelay.conn"


def connector_subject(platform: str, bot_id: str) -> str:
    """Core-NATS request subject the lease-holding connector serves: replies to send on its socket."""
    return f"{CONN_PREFIX}.{_token(platform)}.{_token(bot_id)}"


def dlq_subject(stage: str) -> str:
    return f"{DLQ_PREFIX}.{_token(stage)}"


_PATTERNS = (
    (IN_PREFIX, IN_ALL),
    (OUT_PREFIX, OUT_ALL),
    (DLQ_PREFIX, DLQ_ALL),
    (CONN_PREFIX, f"{CONN_PREFIX}.>"),
)


def pattern_of(subject: str) -> str:
    """The subscription pattern a concrete subject falls under (``imrelay.out.<platform>.<bot>.3`` ->
    ``imrelay.out.>``; a KV key's subject -> ``$KV.<bucket>.>``), for metric labels that must not grow
    with bots and partitions; ``other`` for anything else."""
    for prefix, pattern in _PATTERNS:
        if subject.startswith(prefix + "."):
            return pattern
    if subject.startswith("$KV."):
        bucket = subject.split(".", 2)[1]
        return f"$KV.{bucket}.>" if bucket.startswith("imrelay_") else "$KV.>"
    return "other"


_KV_KEY_RE = re.compile(r"[^-/_=.a-zA-Z0-9]")


def kv_key(*parts: str) -> str:
    """A KV key from parts: characters KV keys do not allow become '_'; parts joined with '.'."""
    return ".".join(_KV_KEY_RE.sub("_", p) or "_" for p in parts)
