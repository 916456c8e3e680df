"""Dead letters: the headers that travel with a message moved to ``imrelay.dlq.<stage>``."""

from __future__ import annotations

from . import subjects as s


def dlq_headers(stage: str, reason: str, *, code: str | int | None = None,
                original_subject: str = "", deliveries: int | None = None,
                msg_id: str | None = None) -> dict[str, str]:
    headers = {
        s.HDR_DLQ_STAGE: stage,
        s.HDR_DLQ_REASON: reason.replace("\r", " ").replace("\n", " ")[:500],
        s.HDR_DLQ_SUBJECT: original_subject,
    }
    if code is not None:
        headers[s.HDR_DLQ_CODE] = str(code)
    if deliveries is not None:
        headers[s.HDR_DLQ_DELIVERIES] = str(deliveries)
    if msg_id:
        headers[s.HDR_MSG_ID] = f"dlq:{stage}:{msg_id}"
    return headers
