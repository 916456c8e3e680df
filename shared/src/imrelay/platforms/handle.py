"""What every platform's reply handle is: where an answer goes, as the platform's ingress found it in the
message, read back by the platform's delivery.

A platform package declares its handle as a frozen model deriving from :class:`ReplyHandleBase`, whose
``kind`` (the platform tag) tells the handles apart in an event. A field that carries a credential says
so by its type: :data:`Secret` (the value is a credential, e.g. an interaction token) or :data:`SecretURL`
(a URL whose query values and path tokens are, e.g. a session webhook), so that every process reading a
handle masks them in its logs and traces (:func:`imrelay.redact.protect_reply_handle`) and no handle
shows them in its ``repr``.

Version 1 events carried the handle as a plain ``{str: str}`` mapping without ``kind``;
:meth:`ReplyHandleBase.upgrade` turns one into the model's input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Annotated, Any, ClassVar, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Credential", "ReplyHandleBase", "Routed", "Secret", "SecretURL"]


class Credential(Enum):
    """How a handle field carries a credential."""

    VALUE = "value"  # the whole value
    URL = "url"  # the credential parts of a URL: secret query values, interaction path tokens


Secret = Annotated[str, Credential.VALUE, Field(repr=False)]
SecretURL = Annotated[str, Credential.URL, Field(repr=False)]


class Routed(Protocol):
    """An event that carries a reply handle (an inbound message, a reply chunk)."""

    @property
    def platform(self) -> str: ...

    @property
    def reply_handle(self) -> ReplyHandleBase | None: ...


class ReplyHandleBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    # a subclass narrows it to ``Literal["<tag>", ...]``, the tags of its platform
    kind: str
    # version 1 field names that changed: old name -> new name
    v1_renames: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def upgrade(cls, v1: Mapping[str, Any], platform: str) -> dict[str, Any]:
        """A version 1 handle (a mapping without ``kind``) of an event of ``platform``, as this model's
        input."""
        return {**{cls.v1_renames.get(k, k): v for k, v in v1.items()}, "kind": platform}

    @classmethod
    def of(cls, event: Routed) -> Self:
        """The event's handle as this model; an answer without one, or with another platform's, cannot be
        delivered (:class:`~imrelay.errors.PermanentUpstreamError`)."""
        handle = event.reply_handle
        if not isinstance(handle, cls):
            from ..errors import PermanentUpstreamError

            got = "none" if handle is None else repr(getattr(handle, "kind", type(handle).__name__))
            raise PermanentUpstreamError(
                event.platform, "bad_handle", f"the reply handle ({got}) is not a {cls.__name__}"
            )
        return handle

    def credentials(self) -> Iterator[tuple[Credential, str]]:
        """The credentials this handle carries, by how each is carried."""
        for name, info in type(self).model_fields.items():
            marks = [m for m in info.metadata if isinstance(m, Credential)]
            value = getattr(self, name)
            if marks and isinstance(value, str) and value:
                yield marks[0], value
