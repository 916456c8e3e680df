"""Where docs/troubleshooting.md explains an error: log lines about a platform code or a refused callback
end with ``(see docs/troubleshooting.md#…)``."""

from __future__ import annotations

__all__ = ["TROUBLESHOOTING", "callback_hint", "platform_anchor", "platform_hint"]

TROUBLESHOOTING = "docs/troubleshooting.md"

_ANCHORS: dict[tuple[str, str], str] = {
    ("wecom", "60020"): "wecom-60020",
    ("wecom", "40001"): "wecom-40001",
    ("wecom", "40013"): "wecom-40001",
    ("wecom", "40056"): "wecom-40001",
    ("wecom", "40014"): "wecom-40014",
    ("wecom", "42001"): "wecom-40014",
    ("wecom", "45009"): "wecom-45009",
    ("feishu", "99991663"): "feishu-99991663",
    ("feishu", "99991661"): "feishu-99991663",
    ("feishu", "10014"): "feishu-10014",
    ("feishu", "10003"): "feishu-10014",
}


def _family(platform: str) -> str:
    if platform.startswith("wecom"):
        return "wecom"
    return "feishu" if platform in ("feishu", "lark") else platform


def platform_anchor(platform: str, code: object) -> str | None:
    return _ANCHORS.get((_family(platform), str(code)))


def platform_hint(platform: str, code: object) -> str:
    """`` (see docs/troubleshooting.md#wecom-60020)`` for a code it explains, else an empty string."""
    anchor = platform_anchor(platform, code)
    return f" (see {TROUBLESHOOTING}#{anchor})" if anchor else ""


def callback_hint(outcome: str) -> str:
    """The hint for a refused callback's outcome (``rejected_signature``, ``rejected_replay``)."""
    anchor = {"rejected_signature": "signature-failures", "rejected_replay": "replay-window"}.get(outcome)
    return f" (see {TROUBLESHOOTING}#{anchor})" if anchor else ""
