"""Day-2 operations behind ``imrelay status``, ``imrelay check-config --online`` and ``imrelay dlq show``.

The collection functions talk to NATS (and, for the go-live check, to the platforms and backends); the
formatting and the explanations of platform error codes are pure functions of what was collected.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

from . import platforms
from . import subjects as s
from .bots import BotBase
from .config import Settings
from .dlq import DeadLetter

TROUBLESHOOTING = "docs/troubleshooting.md"

# ---- status -------------------------------------------------------------------------------------------


def token_key(bot: BotBase) -> str | None:
    """The bot's key in the ``imrelay_tokens`` bucket, as the sender writes it (None: the platform needs
    no access token, e.g. it answers through a webhook or the message's own reply token)."""
    return platforms.spec_for(bot).token_key(bot)


def token_summary(value: bytes | None, now: float) -> dict[str, Any]:
    """What a token record says, never the token itself."""
    if value is None:
        return {"state": "none", "expires_in_seconds": None}
    try:
        expires_at = float(json.loads(value)["expires_at"])
    except (ValueError, KeyError, TypeError):
        return {"state": "unreadable", "expires_in_seconds": None}
    left = expires_at - now
    return {"state": "valid" if left > 0 else "expired", "expires_in_seconds": round(left)}


def lease_summary(value: bytes | None, now: float) -> dict[str, Any]:
    try:
        d = json.loads(value or b"{}")
        owner, expires = str(d["owner"]), float(d["expires"])
    except (ValueError, KeyError, TypeError):
        return {"owner": None, "state": "free"}
    if now >= expires:
        return {"owner": owner, "state": "expired"}
    return {"owner": owner, "state": "held", "expires_in_seconds": round(expires - now, 1)}


async def _kv_value(js: JetStreamContext, bucket: str, key: str) -> bytes | None:
    try:
        kv = await js.key_value(bucket)
        return (await kv.get(key)).value
    except (KeyNotFoundError, NotFoundError):
        return None


async def collect_status(
    js: JetStreamContext, settings: Settings, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """Streams, consumers and their lag, each bot's token and connector lease, dead letters by stage."""
    now = clock()
    streams: list[dict[str, Any]] = []
    consumers: list[dict[str, Any]] = []
    for name in (s.STREAM_IN, s.STREAM_OUT, s.STREAM_DLQ):
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            streams.append({"name": name, "present": False})
            continue
        streams.append(
            {
                "name": name,
                "present": True,
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "first_seq": info.state.first_seq,
                "last_seq": info.state.last_seq,
                "replicas": info.config.num_replicas,
            }
        )
        for c in await js.consumers_info(name):
            consumers.append(
                {
                    "stream": name,
                    "name": c.name,
                    "pending": c.num_pending or 0,
                    "ack_pending": c.num_ack_pending or 0,
                    "redelivered": c.num_redelivered or 0,
                    "waiting": c.num_waiting or 0,
                }
            )
    dlq: dict[str, int] = {}
    try:
        info = await js.stream_info(s.STREAM_DLQ, subjects_filter=s.DLQ_ALL)
        for subject, count in sorted((info.state.subjects or {}).items()):
            dlq[subject.removeprefix(s.DLQ_PREFIX + ".")] = count
    except NotFoundError:
        pass
    bots: list[dict[str, Any]] = []
    for bot in settings.bots:
        entry: dict[str, Any] = {"id": bot.id, "platform": bot.platform, "mode": bot.mode}
        key = token_key(bot)
        entry["token"] = (
            token_summary(await _kv_value(js, s.KV_TOKENS, key), now)
            if key
            else {"state": "not used", "expires_in_seconds": None}
        )
        if bot.mode == "long_connection":
            raw = await _kv_value(js, s.KV_LEASES, s.kv_key(bot.platform, bot.id))
            entry["lease"] = lease_summary(raw, now)
        bots.append(entry)
    return {"streams": streams, "consumers": consumers, "bots": bots, "dead_letters": dlq}


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    if seconds >= 3600:
        return f"{sign}{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{sign}{seconds / 60:.0f}m"
    return f"{sign}{seconds:.0f}s"


def format_status(status: dict[str, Any]) -> str:
    """The text form of :func:`collect_status`."""
    out = ["STREAMS"]
    rows: list[tuple[str, ...]] = [("NAME", "MESSAGES", "BYTES", "LAST SEQ", "REPLICAS")]
    for st in status["streams"]:
        rows.append(
            (st["name"], "missing", "", "", "")
            if not st["present"]
            else (st["name"], str(st["messages"]), str(st["bytes"]), str(st["last_seq"]), str(st["replicas"]))
        )
    out += [_table(rows), "", "CONSUMERS (lag = stored, not yet delivered)"]
    rows = [("STREAM", "CONSUMER", "LAG", "ACK PENDING", "REDELIVERED")]
    rows += [
        (c["stream"], c["name"], str(c["pending"]), str(c["ack_pending"]), str(c["redelivered"]))
        for c in status["consumers"]
    ]
    out += [_table(rows) if len(rows) > 1 else "none", "", "BOTS"]
    rows = [("BOT", "PLATFORM", "TOKEN", "EXPIRES IN", "LEASE OWNER")]
    for b in status["bots"]:
        lease = b.get("lease")
        owner = (
            "-"
            if lease is None
            else (f"{lease['owner']} ({lease['state']})" if lease.get("owner") else "none")
        )
        rows.append(
            (b["id"], b["platform"], b["token"]["state"], _duration(b["token"]["expires_in_seconds"]), owner)
        )
    out += [_table(rows) if len(rows) > 1 else "none", "", "DEAD LETTERS"]
    dlq = status["dead_letters"]
    out.append(", ".join(f"{stage}: {n}" for stage, n in dlq.items()) if dlq else "none")
    return "\n".join(out)


# ---- dead letters -------------------------------------------------------------------------------------


def format_dead_letter(d: DeadLetter) -> str:
    """Every header of one dead letter, and its body (a JSON event, pretty-printed when it is one)."""
    try:
        body = json.dumps(json.loads(d.data), ensure_ascii=False, indent=2)
    except ValueError:
        body = d.data.decode("utf-8", "replace")
    when = d.time.strftime("%Y-%m-%d %H:%M:%S UTC") if d.time else "?"
    return "\n".join(
        [
            f"seq:              {d.seq}",
            f"time:             {when}",
            f"stage:            {d.stage}",
            f"platform code:    {d.code or '-'}",
            f"reason:           {d.reason}",
            f"original subject: {d.original_subject}",
            f"deliveries:       {d.deliveries or '-'}",
            "",
            body,
        ]
    )


# ---- go-live check ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    what: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.what}: {self.detail}"


def explain_platform_error(platform: str, code: str, message: str) -> str:
    """A token or API error in words an operator can act on, with the troubleshooting anchor."""
    from .hints import platform_hint

    try:
        cause = platforms.spec(platform).causes.get(code)
    except ValueError:
        cause = None
    return f"{platform} error {code}: {cause or message}" + (
        platform_hint(platform, code) or f" (see {TROUBLESHOOTING})"
    )


def explain_exception(platform: str, exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if code is not None and not isinstance(exc, OSError):
        message = getattr(exc, "message", "") or str(exc)
        return explain_platform_error(platform, str(code), str(message))
    return f"{type(exc).__name__}: {exc}"


async def run_checks(
    checks: list[tuple[str, Callable[[], Awaitable[str]]]], seconds_each: float = 20.0
) -> list[Check]:
    """Run each named check (it returns what it found, or raises what went wrong), one at a time."""
    results = []
    for what, check in checks:
        try:
            results.append(Check(what, True, await asyncio.wait_for(check(), seconds_each)))
        except TimeoutError:
            results.append(Check(what, False, f"no answer within {seconds_each:g}s"))
        except Exception as exc:
            results.append(Check(what, False, str(exc) or type(exc).__name__))
    return results
