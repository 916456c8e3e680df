"""Splitting an answer into messages that fit a platform's byte limit, never inside a character.

Pure functions. A split prefers, in order, a paragraph break, a line break, a sentence end, then a space,
as long as it falls in the last quarter of the window; otherwise it cuts at the last whole character that
fits. Joining the parts gives back the text exactly (separators stay at the end of a part).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["split_chars", "split_utf8"]

_BREAKS = ("\n\n", "\n", "。", ". ", "！", "？", "! ", "? ", " ")


def _fit(text: str, max_bytes: int) -> int:
    """The largest n such that text[:n] encodes in at most max_bytes UTF-8 bytes."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return len(text)
    cut = encoded[:max_bytes]
    # Drop a trailing partial character (continuation bytes of a cut code point).
    return len(cut.decode("utf-8", errors="ignore"))


def split_utf8(text: str, max_bytes: int) -> list[str]:
    """Split ``text`` into parts of at most ``max_bytes`` UTF-8 bytes each; ``"".join(parts) == text``."""
    if max_bytes < 4:
        raise ValueError("max_bytes must allow at least one character (4 bytes)")
    return _split(text, lambda rest: _fit(rest, max_bytes))


def split_chars(text: str, max_chars: int) -> list[str]:
    """Split ``text`` into parts of at most ``max_chars`` characters (for platforms that count characters)."""
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    return _split(text, lambda rest: min(len(rest), max_chars))


def _split(text: str, fit: Callable[[str], int]) -> list[str]:
    parts: list[str] = []
    rest = text
    while rest:
        n = fit(rest)
        if n == len(rest):
            parts.append(rest)
            break
        window = rest[:n]
        floor = (n * 3) // 4
        cut = n
        for sep in _BREAKS:
            i = window.rfind(sep, floor)
            if i != -1:
                cut = i + len(sep)
                break
        parts.append(rest[:cut])
        rest = rest[cut:]
    return parts
