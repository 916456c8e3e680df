"""What the ingress's platform adapters share: each platform's package has one (pure verify / decrypt /
parse / normalize, no I/O).

Each adapter turns a :class:`CallbackRequest` into a :class:`CallbackResult` (the HTTP answer for the
platform, and the normalized message to store, if any) or raises a
:class:`~imrelay.errors.CallbackError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from imrelay.answer_streams import StreamRecord
from imrelay.errors import ParseError, ReplayError, VerifyError
from imrelay.events import InboundMessage
from imrelay.media import MediaRef

# Platform payloads nest a few levels deep; anything deeper is refused before it reaches a parser (deep
# nesting makes recursive parsers and walkers fail with RecursionError).
MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    method: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    now: float


@dataclass(frozen=True, slots=True)
class ReplayClaim:
    """A signature that must be used once only (from a platform that signs a timestamp, not the body):
    ``key`` names the signed headers, ``fingerprint`` the body they came with. The ingress stores the claim
    cluster-wide for ``ttl`` seconds; the same headers with another body are refused, with the same body (a
    platform retry) they pass and the message store drops the duplicate."""

    key: str
    fingerprint: str
    ttl: float


@dataclass(frozen=True, slots=True)
class CallbackResult:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"
    message: InboundMessage | None = None
    dedupe_key: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    stream_open: str | None = None  # an AI-bot answer stream to start once the message is stored
    stream_poll: str | None = None  # an AI-bot poll: answer from the stream store
    replay_claim: ReplayClaim | None = None  # to record before anything is stored


class Payload(BaseModel):
    """Base of the platforms' payload models: unknown fields ignored, numbers accepted where a string is
    expected (platforms are not consistent about ids), anything else of the wrong type refused."""

    model_config = ConfigDict(extra="ignore", frozen=True, coerce_numbers_to_str=True)


_Model = TypeVar("_Model", bound=BaseModel)


def parse_model(model: type[_Model], data: Any, what: str) -> _Model:
    """Validate ``data`` as ``model``; a shape error is a ParseError naming the field, never the value."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise ParseError(f"{what}: {where}: {err['type']}") from None


def check_depth(data: bytes | str, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` (counted over brackets outside strings)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return  # cannot be deeper than the number of openers: the common case costs two scans
    depth, in_string, escaped = 0, False, False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):
            depth += 1
            if depth > limit:
                raise ParseError(f"JSON nested deeper than {limit} levels")
        elif byte in (0x7D, 0x5D):
            depth -= 1


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _scrub(value: Any) -> Any:
    """Replace lone UTF-16 surrogates (``"\\ud800"`` in JSON) that no UTF-8 text can carry."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def loads_json(data: bytes | str, what: str = "body") -> Any:
    """``json.loads`` for untrusted input: depth bounded, strict UTF-8, lone surrogates replaced."""
    check_depth(data)
    try:
        # bytes are decoded strictly here: json.loads alone lets UTF-8-encoded surrogates through
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ParseError(f"{what} is not JSON") from exc
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            return _scrub(value)
    return _scrub(value) if _SURROGATE_ESCAPE.search(data) else value


def parse_json(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body; anything else is a ParseError (HTTP 400)."""
    data = loads_json(body)
    if not isinstance(data, dict):
        raise ParseError("body is not a JSON object")
    return data


def json_body(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def check_timestamp(value: str | None, now: float, window: float, *, scale: float = 1.0) -> None:
    """Refuse a signed timestamp (``value`` in 1/``scale`` seconds) further than ``window`` seconds from
    ``now`` (either way): a captured request replayed later is not answered. ``window`` 0: no check."""
    if not window:
        return
    if not value or not value.isascii() or not value.isdigit() or len(value) > 16:
        raise VerifyError("timestamp is not a number")
    if abs(now - int(value) / scale) > window:
        raise ReplayError("timestamp outside the replay window")


class Adapter(Protocol):
    def handle(self, request: CallbackRequest) -> CallbackResult: ...


@runtime_checkable
class StreamingAdapter(Adapter, Protocol):
    def poll_reply(
        self,
        request: CallbackRequest,
        sid: str,
        record: StreamRecord | None,
        images: Sequence[tuple[MediaRef, bytes]] = (),
    ) -> bytes:
        """The answer to a poll of stream ``sid``; ``images`` are the bytes of ``record.media`` (those that
        could be read) once the stream is finished."""
        ...
