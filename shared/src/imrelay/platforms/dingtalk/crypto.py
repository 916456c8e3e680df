"""DingTalk robot signatures, as pure functions: ``base64(HMAC-SHA256(secret, timestamp + "\\n" + secret))``.

The same scheme signs incoming robot callbacks (``timestamp`` / ``sign`` headers, valid one hour either
way) and outgoing custom-robot webhook calls (``&timestamp=…&sign=…``, secret starting with ``SEC``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from urllib.parse import quote

from ...errors import ReplayError, VerifyError

__all__ = ["WINDOW_MS", "sign", "signed_query", "verify"]

WINDOW_MS = 3_600_000


def sign(timestamp: str, secret: str) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}\n{secret}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def verify(
    timestamp: str | None, received: str | None, secret: str, now_ms: int, window_ms: int = WINDOW_MS
) -> None:
    """Check ``sign`` and that ``timestamp`` is within ``window_ms`` of ``now_ms`` (at most one hour)."""
    if not timestamp or not received:
        raise VerifyError("missing timestamp or sign header")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 16:
        raise VerifyError("timestamp is not a number")
    if abs(now_ms - int(timestamp)) > min(window_ms, WINDOW_MS):
        raise ReplayError("timestamp outside the replay window")
    try:
        got = base64.b64decode(received.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise VerifyError("sign is not base64") from exc
    expected = base64.b64decode(sign(timestamp, secret))
    if not hmac.compare_digest(expected, got):
        raise VerifyError("signature mismatch")


def signed_query(timestamp: str, secret: str) -> str:
    """The ``&timestamp=…&sign=…`` suffix of a signed custom-robot webhook URL."""
    return f"&timestamp={timestamp}&sign={quote(sign(timestamp, secret), safe='')}"
