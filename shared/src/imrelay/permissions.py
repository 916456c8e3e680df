"""Each service's NATS permissions, defined once: the nats-server ``authorization`` block, the chart's
users and ``docs/nats-permissions.md`` are generated from :data:`PERMISSIONS`.

A service may publish and subscribe only to what it uses: the ingress stores inbound messages but reads no
memory and no token, and only reads answers' images from the media bucket (for platforms that poll the
answer); the worker reads inbound messages, its memory, and the platforms' tokens
(to download users' media by the platform's own method), and writes the media bucket; the sender reads
tokens and media; the connector holds its leases. The JetStream API subjects are named per stream, bucket and
durable consumer. ``cli`` is the administrator (``imrelay nats setup``, ``imrelay dlq``). Every service may
create the streams and buckets it uses when they are missing; only the administrator may change them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from . import subjects as s

__all__ = [
    "PERMISSIONS",
    "SERVICES",
    "Permissions",
    "authorization_block",
    "authorization_from_environment",
    "chart_template",
    "markdown",
    "password_variable",
]

API = "$JS.API"
INBOX = "_INBOX.>"  # replies to requests, JetStream API answers and PubAcks


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False  # may answer requests it received (the connector's reply RPC)
    purpose: str = field(default="", compare=False)

    def as_server_permissions(self) -> dict[str, object]:
        out: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            out["allow_responses"] = True
        return out


def _streams(*names: str) -> list[str]:
    """Look up, and create when missing, the named streams."""
    return [f"{API}.STREAM.{op}.{n}" for n in names for op in ("INFO", "CREATE")]


def _kv(*buckets: str) -> list[str]:
    """Read, write and watch the named KV buckets (and create them when missing)."""
    out: list[str] = []
    for b in buckets:
        out += [
            f"$KV.{b}.>",
            f"{API}.STREAM.INFO.KV_{b}",
            f"{API}.STREAM.CREATE.KV_{b}",
            f"{API}.DIRECT.GET.KV_{b}.>",
            f"{API}.STREAM.MSG.GET.KV_{b}",
            # watching a bucket (the sender's in-process token copy): an ordered consumer on its stream
            f"{API}.CONSUMER.CREATE.KV_{b}",
            f"{API}.CONSUMER.CREATE.KV_{b}.>",
            f"{API}.CONSUMER.INFO.KV_{b}.>",
            f"{API}.CONSUMER.DELETE.KV_{b}.>",
        ]
    return out


def _kv_keys(bucket: str, prefix: str) -> list[str]:
    """Write the keys under ``prefix`` of one KV bucket, read it (and create it when missing)."""
    return [
        f"$KV.{bucket}.{prefix}.>",
        f"{API}.STREAM.INFO.KV_{bucket}",
        f"{API}.STREAM.CREATE.KV_{bucket}",
        f"{API}.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{prefix}.>",
        f"{API}.STREAM.MSG.GET.KV_{bucket}",
    ]


def _objects(*buckets: str) -> list[str]:
    """Read and write the named Object Store buckets (and create them when missing): objects are read
    with ordered consumers delivering to an inbox (whose stream the client looks up by subject)."""
    out: list[str] = [f"{API}.STREAM.NAMES"]
    for b in buckets:
        stream = f"OBJ_{b}"
        out += [
            f"$O.{b}.>",
            f"{API}.STREAM.INFO.{stream}",
            f"{API}.STREAM.CREATE.{stream}",
            f"{API}.STREAM.PURGE.{stream}",
            f"{API}.STREAM.MSG.GET.{stream}",
            f"{API}.DIRECT.GET.{stream}.>",
            f"{API}.CONSUMER.CREATE.{stream}",
            f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.INFO.{stream}.>",
            f"{API}.CONSUMER.DELETE.{stream}.>",
        ]
    return out


def _objects_read(*buckets: str) -> list[str]:
    """Read the named Object Store buckets (no writes, no creation)."""
    out: list[str] = [f"{API}.STREAM.NAMES"]
    for b in buckets:
        stream = f"OBJ_{b}"
        out += [
            f"{API}.STREAM.INFO.{stream}",
            f"{API}.STREAM.MSG.GET.{stream}",
            f"{API}.DIRECT.GET.{stream}.>",
            f"{API}.CONSUMER.CREATE.{stream}",
            f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.INFO.{stream}.>",
            f"{API}.CONSUMER.DELETE.{stream}.>",
        ]
    return out


def _consumer(stream: str, durable: str) -> list[str]:
    """Pull from a durable consumer (``*`` for a family such as ``sender-p<k>``): create, inspect, fetch
    and acknowledge."""
    return [
        f"{API}.CONSUMER.INFO.{stream}.{durable}",
        f"{API}.CONSUMER.CREATE.{stream}.{durable}",
        f"{API}.CONSUMER.CREATE.{stream}.{durable}.>",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


STREAMS = (s.STREAM_IN, s.STREAM_OUT, s.STREAM_DLQ)

PERMISSIONS: dict[str, Permissions] = {
    "ingress": Permissions(
        publish=(s.IN_ALL, *_streams(*STREAMS), *_kv(s.KV_STREAMS, s.KV_REPLAY), *_objects_read(s.OBJ_MEDIA)),
        subscribe=(INBOX,),
        purpose="stores verified callbacks; answers polled answer streams (with their images); records "
        "once-only signatures",
    ),
    "connector": Permissions(
        publish=(s.IN_ALL, *_streams(*STREAMS), *_kv(s.KV_STREAMS, s.KV_REPLAY, s.KV_LEASES)),
        subscribe=(INBOX, "imrelay.conn.>"),
        allow_responses=True,
        purpose="stores messages from long connections; holds socket leases; answers the sender's replies",
    ),
    "worker": Permissions(
        publish=(
            s.OUT_ALL,
            "imrelay.dlq.worker",
            *_streams(*STREAMS),
            *_kv(s.KV_MEMORY, s.KV_TOKENS),
            *_kv_keys(s.KV_DELIVERIES, "inbound"),  # the messages it answered, not the reply records
            *_objects(s.OBJ_MEDIA),
            *_consumer(s.STREAM_IN, s.CONSUMER_WORKER),
        ),
        subscribe=(INBOX,),
        purpose="reads inbound messages, keeps conversation memory, downloads and stores users' media "
        "(with the platforms' tokens), writes reply chunks, records each message it answered",
    ),
    "sender": Permissions(
        publish=(
            "imrelay.dlq.sender",
            "imrelay.conn.>",
            *_streams(*STREAMS),
            *_kv(s.KV_TOKENS, s.KV_DELIVERIES, s.KV_RATELIMITS, s.KV_STREAMS),
            *_objects(s.OBJ_MEDIA),
            *_consumer(s.STREAM_OUT, "*"),
        ),
        subscribe=(INBOX,),
        purpose="reads reply chunks and answers' media; owns access tokens, rate limits and delivery records",
    ),
    "cli": Permissions(
        publish=(">",),
        subscribe=(">",),
        purpose="administrator: sets up streams and buckets, lists and re-drives dead letters",
    ),
}
SERVICES = tuple(PERMISSIONS)


def authorization_block(passwords: Mapping[str, str], usernames: Mapping[str, str] | None = None) -> str:
    """The nats-server ``authorization { users = [...] }`` block for the services named in ``passwords``
    (user ``imrelay-<service>`` unless ``usernames`` says otherwise). Values are JSON strings, which the
    server's configuration format reads as they are (``$`` included)."""
    users = [
        {
            "user": (usernames or {}).get(svc, f"imrelay-{svc}"),
            "password": pw,
            "permissions": PERMISSIONS[svc].as_server_permissions(),
        }
        for svc, pw in passwords.items()
    ]
    return "authorization {\n  users = " + json.dumps(users, indent=2) + "\n}\n"


def password_variable(service: str) -> str:
    """The environment variable that holds ``service``'s NATS password (server and chart side)."""
    return f"IMRELAY_NATS_PASSWORD_{service.upper()}"


def authorization_from_environment() -> str:
    """The ``authorization`` block with every service's password read by nats-server from its environment
    (``$IMRELAY_NATS_PASSWORD_<SERVICE>``): what the chart's bundled NATS runs with."""
    marker = "\x00{}\x00"
    block = authorization_block({svc: marker.format(svc) for svc in SERVICES})
    for svc in SERVICES:
        block = block.replace(json.dumps(marker.format(svc)), "$" + password_variable(svc))
    return block


def chart_template() -> str:
    """``charts/nats/templates/_imrelay_authorization.tpl`` of the Helm chart."""
    return (
        "{{- /* Generated from shared/src/imrelay/permissions.py by `imrelay nats permissions --chart`; "
        "a test fails when they differ. */ -}}\n"
        '{{- define "nats.imrelayAuthorization" -}}\n' + authorization_from_environment() + "{{- end }}\n"
    )


def _code(items: Iterable[str]) -> str:
    return "<br>".join(f"`{i}`" for i in items)


def markdown() -> str:
    """``docs/nats-permissions.md``: the permission set of every service."""
    lines = [
        "# NATS permissions",
        "",
        "Generated from `shared/src/imrelay/permissions.py` (`imrelay nats permissions --markdown`); a test "
        "fails when this page and the definition differ. Each service connects as its own user "
        "(`imrelay-<service>`, credentials through `IMRELAY_NATS_USER` / `IMRELAY_NATS_PASSWORD` or "
        "`nats.auth`). `imrelay nats server-config` prints the matching nats-server `authorization` block.",
        "",
        "| service | what it does | may publish | may subscribe |",
        "|---|---|---|---|",
    ]
    for svc, p in PERMISSIONS.items():
        sub = [*p.subscribe, *(["replies to requests it receives"] if p.allow_responses else [])]
        lines.append(f"| `{svc}` | {p.purpose} | {_code(p.publish)} | {_code(sub)} |")
    return "\n".join(lines) + "\n"
