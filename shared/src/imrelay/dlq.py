"""Dead letters: the headers that travel with a message moved to ``imrelay.dlq.<stage>``, and listing and
re-driving them (``imrelay dlq``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from . import subjects as s
from .redact import redact


def dlq_headers(
    stage: str,
    reason: str,
    *,
    code: str | int | None = None,
    original_subject: str = "",
    deliveries: int | None = None,
    msg_id: str | None = None,
) -> dict[str, str]:
    headers = {
        s.HDR_DLQ_STAGE: stage,
        s.HDR_DLQ_REASON: redact(reason).replace("\r", " ").replace("\n", " ")[:500],
        s.HDR_DLQ_SUBJECT: original_subject,
    }
    if code is not None:
        headers[s.HDR_DLQ_CODE] = str(code)
    if deliveries is not None:
        headers[s.HDR_DLQ_DELIVERIES] = str(deliveries)
    if msg_id:
        headers[s.HDR_MSG_ID] = f"dlq:{stage}:{msg_id}"
    return headers


@dataclass(frozen=True, slots=True)
class DeadLetter:
    seq: int
    time: datetime | None
    stage: str
    code: str
    reason: str
    original_subject: str
    deliveries: str
    data: bytes

    @classmethod
    def from_raw(
        cls, seq: int, time: datetime | None, headers: dict[str, str] | None, data: bytes
    ) -> DeadLetter:
        h = headers or {}
        return cls(
            seq=seq,
            time=time,
            stage=h.get(s.HDR_DLQ_STAGE, "?"),
            code=h.get(s.HDR_DLQ_CODE, ""),
            reason=h.get(s.HDR_DLQ_REASON, ""),
            original_subject=h.get(s.HDR_DLQ_SUBJECT, ""),
            deliveries=h.get(s.HDR_DLQ_DELIVERIES, ""),
            data=data,
        )


def format_table(letters: list[DeadLetter]) -> str:
    rows = [("SEQ", "TIME (UTC)", "STAGE", "CODE", "SUBJECT", "REASON")]
    for d in letters:
        when = d.time.strftime("%Y-%m-%d %H:%M:%S") if d.time else "?"
        rows.append((str(d.seq), when, d.stage, d.code, d.original_subject, d.reason[:60]))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5] for r in rows
    )


async def list_dead_letters(
    js: JetStreamContext, stage: str | None = None, limit: int = 100
) -> list[DeadLetter]:
    """The newest ``limit`` dead letters (of one stage, if given), oldest first."""
    info = await js.stream_info(s.STREAM_DLQ)
    out: list[DeadLetter] = []
    seq = info.state.last_seq
    while seq >= max(info.state.first_seq, 1) and len(out) < limit:
        try:
            raw = await js.get_msg(s.STREAM_DLQ, seq)
        except NotFoundError:
            seq -= 1
            continue
        letter = DeadLetter.from_raw(seq, raw.time, raw.headers, raw.data or b"")
        if stage is None or letter.stage == stage:
            out.append(letter)
        seq -= 1
    return list(reversed(out))


async def get_dead_letter(js: JetStreamContext, seq: int) -> DeadLetter | None:
    try:
        raw = await js.get_msg(s.STREAM_DLQ, seq)
    except NotFoundError:
        return None
    return DeadLetter.from_raw(seq, raw.time, raw.headers, raw.data or b"")


async def redrive(js: JetStreamContext, seq: int) -> str:
    """Publish dead letter ``seq`` to its original subject again and remove it from the DLQ; returns the
    subject. The message gets a new ``Nats-Msg-Id`` so the stream's duplicate window lets it through."""
    raw = await js.get_msg(s.STREAM_DLQ, seq)
    letter = DeadLetter.from_raw(seq, raw.time, raw.headers, raw.data or b"")
    if not letter.original_subject.startswith((s.IN_PREFIX + ".", s.OUT_PREFIX + ".")):
        raise ValueError(f"dead letter {seq} has no original subject to go back to")
    await js.publish(
        letter.original_subject,
        letter.data,
        headers={s.HDR_MSG_ID: f"redrive:{seq}:{raw.time.timestamp() if raw.time else 0}"},
    )
    await js.delete_msg(s.STREAM_DLQ, seq)
    return letter.original_subject
