"""Where docs/troubleshooting.md explains an error: log lines about a platform code or a refused callback
end with ``(see docs/troubleshooting.md#…)``."""

from __future__ import annotations

__all__ = ["TROUBLESHOOTING", "callback_hint", "platform_anchor", "platform_hint"]

TROUBLESHOOTING = "docs/troubleshooting.md"


def platform_anchor(platform: str, code: object) -> str | None:
    from . import platforms

    try:
        return platforms.spec(platform).hints.get(str(code))
    except ValueError:
        return None


def platform_hint(platform: str, code: object) -> str:
    """`` (see docs/troubleshooting.md#<anchor>)`` for a code it explains, else an empty string."""
    anchor = platform_anchor(platform, code)
    return f" (see {TROUBLESHOOTING}#{anchor})" if anchor else ""


def callback_hint(outcome: str) -> str:
    """The hint for a refused callback's outcome (``rejected_signature``, ``rejected_replay``)."""
    anchor = {"rejected_signature": "signature-failures", "rejected_replay": "replay-window"}.get(outcome)
    return f" (see {TROUBLESHOOTING}#{anchor})" if anchor else ""
