"""Images in an answer's text: markdown image links (``![alt](https://…)``) a model wrote."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ImageLink", "image_links", "replace_links"]

# ![alt](url) or ![alt](url "title"); the URL without spaces or parentheses
_IMAGE_RE = re.compile(r"!\[([^\]\n]{0,200})\]\(\s*(https?://[^\s()<>]{1,2000})(?:\s+\"[^\"\n]*\")?\s*\)")


@dataclass(frozen=True, slots=True)
class ImageLink:
    alt: str
    url: str
    span: tuple[int, int]


def image_links(text: str, limit: int = 8) -> list[ImageLink]:
    """The first ``limit`` distinct image links of ``text``, in order."""
    out: list[ImageLink] = []
    seen: set[str] = set()
    for m in _IMAGE_RE.finditer(text):
        url = m.group(2)
        if url in seen:
            continue
        seen.add(url)
        out.append(ImageLink(m.group(1).strip(), url, m.span()))
        if len(out) >= limit:
            break
    return out


def replace_links(text: str, replacement: dict[str, str]) -> str:
    """``text`` with each image link whose URL is in ``replacement`` replaced by its value (the image is
    sent as an image; the text keeps its alt text, or nothing)."""

    def sub(m: re.Match[str]) -> str:
        url = m.group(2)
        return replacement.get(url, m.group(0))

    out = _IMAGE_RE.sub(sub, text)
    return re.sub(r"\n{3,}", "\n\n", out).strip() if out != text else text
