"""Media between the platforms and the backends: pictures, files, voice and video.

Bytes never travel on a stream (JetStream's messages are capped at 1 MiB): they live in the
``imrelay_media`` Object Store bucket (:mod:`imrelay.media.store`) for ``media.ttl_seconds`` and events
carry a :class:`MediaRef` to them. The pure parts are here and in :mod:`~imrelay.media.sniff` (the type
of the bytes, read from the bytes) and :mod:`~imrelay.media.links` (images in an answer's text); the
network parts in :mod:`~imrelay.media.fetch` (capped downloads, the SSRF guard).

What goes wrong with one piece of media is a :class:`MediaError` with a :class:`MediaProblem`: it is
counted, logged and told to the user in one line (:func:`user_line`); it never fails the message.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MEDIA_KINDS",
    "MediaError",
    "MediaKind",
    "MediaProblem",
    "MediaRef",
    "MediaSupport",
    "user_line",
]


class MediaKind(StrEnum):
    IMAGE = "image"
    FILE = "file"
    VOICE = "voice"
    VIDEO = "video"


MEDIA_KINDS = frozenset(k.value for k in MediaKind)


class MediaRef(BaseModel):
    """Bytes stored in the media bucket: what an event carries instead of them."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: MediaKind
    key: str  # the object's name in the bucket
    name: str = ""  # a file name to show (the platform's, or made from the kind and type)
    size: int = Field(ge=0)
    sha256: str
    mime: str  # sniffed from the bytes, not taken from the platform


class MediaProblem(StrEnum):
    OVERSIZE = "oversize"  # larger than media.max_bytes or the platform's limit
    UNSUPPORTED = "unsupported"  # a kind or type the platform or the backend cannot take
    DOWNLOAD_FAILED = "download_failed"
    UPLOAD_FAILED = "upload_failed"
    BLOCKED = "blocked"  # an address the SSRF guard refuses
    NOT_READ = "not_read"  # voice without a transcript and no speech-to-text configured


class MediaError(Exception):
    def __init__(self, problem: MediaProblem, detail: str = "") -> None:
        super().__init__(f"{problem.value}: {detail}" if detail else problem.value)
        self.problem = problem
        self.detail = detail


class MediaSupport(BaseModel):
    """What a platform's package can do with media: the kinds it fetches from messages (``inbound``),
    the kinds it can send (``outbound``), and its size limits in bytes by kind (outbound uploads;
    ``inbound_limits`` for downloads where the platform has one)."""

    model_config = ConfigDict(frozen=True)

    inbound: frozenset[MediaKind] = frozenset()
    outbound: frozenset[MediaKind] = frozenset()
    limits: dict[MediaKind, int] = Field(default_factory=dict)
    inbound_limits: dict[MediaKind, int] = Field(default_factory=dict)
    note: str = ""  # a line for the README's table (e.g. "voice arrives transcribed")


_WHAT = {
    MediaKind.IMAGE: "picture",
    MediaKind.FILE: "file",
    MediaKind.VOICE: "voice message",
    MediaKind.VIDEO: "video",
}


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def user_line(
    kind: MediaKind | str, problem: MediaProblem, *, limit: int | None = None, outbound: bool = False
) -> str:
    """The one line a user reads about a piece of media that was not read (or not sent)."""
    what = _WHAT.get(MediaKind(kind), "attachment") if kind in MEDIA_KINDS else "attachment"
    if outbound:
        reason = {
            MediaProblem.OVERSIZE: f"it is larger than {_mb(limit)}" if limit else "it is too large",
            MediaProblem.UNSUPPORTED: "this chat cannot show it",
            MediaProblem.BLOCKED: "its address is not allowed",
            MediaProblem.DOWNLOAD_FAILED: "it could not be downloaded",
            MediaProblem.UPLOAD_FAILED: "the upload failed",
        }.get(problem, "it could not be sent")
        return f"(A {what} in this answer could not be shown: {reason}.)"
    reason = {
        MediaProblem.OVERSIZE: f"it is larger than {_mb(limit)}" if limit else "it is too large",
        MediaProblem.UNSUPPORTED: "I cannot read that kind of attachment",
        MediaProblem.DOWNLOAD_FAILED: "it could not be downloaded",
        MediaProblem.NOT_READ: "I cannot listen to voice messages here",
    }.get(problem, "it could not be read")
    return f"(I could not read your {what}: {reason}.)"
