"""Secrets out of logs and traces, and untrusted text out of log structure.

One process-wide :data:`MASKER` knows every secret value the process holds: the configuration's
(:func:`protect_settings`: every ``SecretStr`` of every bot and backend) and the tokens it obtains on the way
(access tokens, and the credentials a reply handle's model marks: session webhooks, interaction tokens,
reply URLs: :func:`protect_reply_handle`). :func:`redact` replaces each of them, and every credential a URL
can carry by its shape (``access_token=``, ``corpsecret=``, ``key=``, ``session=`` ... query values, the
token in ``/webhooks/{application}/{token}`` paths, JSON fields named ``*token``, ``*secret`` ...), with
``[REDACTED]``.

The rule for short values: a secret of :data:`MIN_SUBSTRING` (6) characters or more is masked wherever it
occurs, also inside a longer word; one of 3 to 5 characters only where it stands alone (not preceded or
followed by a letter or digit), so a short secret does not blank out every word that contains it; values
of 1 or 2 characters are not masked at all (they protect nothing). Each value is also masked in its
URL-encoded forms.

* :class:`RedactingFilter` is the logging side: it masks the message, its arguments, the exception text
  and the stack, and escapes control characters (``\\n``, ``\\r``, ANSI escapes ...) in the arguments, so
  an untrusted value cannot forge a log line. :func:`install_log_redaction` installs it on the root
  handlers and as the log-record factory, so loggers that do not propagate (uvicorn's) are covered too.
* :class:`RedactingSpanExporter` is the tracing side: every span's name, attributes (URLs, captured
  headers, ``exception.*`` events) and status are scrubbed before export; :func:`httpx_request_hook`
  rewrites the URL attributes of an HTTP client span as soon as the span starts.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from numbers import Number
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Span, Status
from opentelemetry.util.types import Attributes, AttributeValue

if TYPE_CHECKING:
    from .config import Settings
    from .platforms.handle import ReplyHandleBase

__all__ = [
    "MASK",
    "MASKER",
    "MIN_SUBSTRING",
    "Masker",
    "RedactingFilter",
    "RedactingSpanExporter",
    "escape_controls",
    "httpx_request_hook",
    "install_log_redaction",
    "protect_obtained",
    "protect_reply_handle",
    "protect_settings",
    "redact",
    "redact_url",
    "scrub_span",
]

MASK = "[REDACTED]"
MIN_SUBSTRING = 6
MIN_WORD = 3

# Query parameters and header names that carry credentials, whatever the platform.
_SECRET_PARAMS = (
    "access_token",
    "accesstoken",
    "corpsecret",
    "secret",
    "appsecret",
    "app_secret",
    "client_secret",
    "key",
    "api_key",
    "apikey",
    "session",
    "token",
    "sign",
    "signature",
    "msg_signature",
    "password",
    "ticket",
    "code",
    "response_code",
)
_PARAM_RE = re.compile(r"(?i)([?&;](?:" + "|".join(_SECRET_PARAMS) + r")=)[^&#\s\"'<>]+")
# Interaction paths: /interactions/{id}/{token}/callback, /webhooks/{application_id}/{token}[/messages/…]
_PATH_RE = re.compile(r"(/(?:webhooks|interactions)/[^/?#\s\"']+/)[^/?#\s\"']+")
# JSON or a Python dict shown as text: the string value of a field named like a credential.
_FIELD_RE = re.compile(
    r"""(?i)(["'][\w.-]*(?:token|secret|password|api_?key|session_?webhook|webhook_?url)["']\s*:\s*["'])"""
    r"""[^"'\\]+"""
)
_SECRET_HEADER_RE = re.compile(r"(?i)auth|token|secret|key|sign|cookie|session|password|credential")
_HEADER_ATTR_RE = re.compile(r"^http\.(?:request|response)\.header\.(.+)$")
# Secret values handed out per message: the newest ones are kept (their platforms expire them anyway).
MAX_EPHEMERAL = 16384


class Masker:
    """The secret values to mask: permanent ones (configuration) and a bounded set of obtained tokens.

    Matching is a scan keyed by each value's first :data:`MIN_SUBSTRING` characters, so its cost does not
    grow with the number of values known."""

    def __init__(self, max_ephemeral: int = MAX_EPHEMERAL) -> None:
        self._lock = threading.Lock()
        self._permanent: set[str] = set()
        self._ephemeral: OrderedDict[str, None] = OrderedDict()
        self._max_ephemeral = max_ephemeral
        self._index: dict[str, tuple[str, ...]] = {}
        self._short: set[str] = set()
        self._short_re: re.Pattern[str] | None = None

    def add(self, value: str | None, *, ephemeral: bool = False) -> None:
        """Mask ``value`` (and its URL-encoded forms) from now on. ``ephemeral`` values are forgotten,
        oldest first, beyond :data:`MAX_EPHEMERAL`; adding one again keeps it."""
        if not value or len(value) < MIN_WORD:
            return
        forms = {value, quote(value, safe=""), quote_plus(value, safe="")}
        with self._lock:
            for form in forms:
                if ephemeral:
                    if form in self._permanent:
                        continue
                    if form in self._ephemeral:
                        self._ephemeral.move_to_end(form)
                        continue
                    self._ephemeral[form] = None
                    self._insert(form)
                elif form not in self._permanent:
                    self._ephemeral.pop(form, None)
                    self._permanent.add(form)
                    self._insert(form)
            while len(self._ephemeral) > self._max_ephemeral:
                old, _ = self._ephemeral.popitem(last=False)
                self._remove(old)

    def _insert(self, value: str) -> None:
        if len(value) < MIN_SUBSTRING:
            self._short.add(value)
            self._compile_short()
            return
        prefix = value[:MIN_SUBSTRING]
        known = self._index.get(prefix, ())
        if value not in known:
            self._index[prefix] = tuple(sorted((*known, value), key=len, reverse=True))

    def _remove(self, value: str) -> None:
        if len(value) < MIN_SUBSTRING:
            self._short.discard(value)
            self._compile_short()
            return
        prefix = value[:MIN_SUBSTRING]
        rest = tuple(v for v in self._index.get(prefix, ()) if v != value)
        if rest:
            self._index[prefix] = rest
        else:
            self._index.pop(prefix, None)

    def _compile_short(self) -> None:
        words = sorted(self._short, key=len, reverse=True)
        self._short_re = (
            re.compile(r"(?<![0-9A-Za-z])(?:" + "|".join(map(re.escape, words)) + r")(?![0-9A-Za-z])")
            if words
            else None
        )

    def clear(self) -> None:
        with self._lock:
            self._permanent.clear()
            self._ephemeral.clear()
            self._index = {}
            self._short.clear()
            self._short_re = None

    def __contains__(self, value: object) -> bool:
        return value in self._permanent or value in self._ephemeral

    def mask(self, text: str) -> str:
        index, short_re = self._index, self._short_re
        if index and len(text) >= MIN_SUBSTRING:
            parts: list[str] = []
            last = i = 0
            end = len(text) - MIN_SUBSTRING
            while i <= end:
                candidates = index.get(text[i : i + MIN_SUBSTRING])
                if candidates:
                    for value in candidates:
                        if text.startswith(value, i):
                            parts.append(text[last:i])
                            parts.append(MASK)
                            i = last = i + len(value)
                            break
                    else:
                        i += 1
                else:
                    i += 1
            if parts:
                parts.append(text[last:])
                text = "".join(parts)
        if short_re is not None:
            text = short_re.sub(MASK, text)
        return text

    def __repr__(self) -> str:
        return f"Masker({len(self._permanent)} permanent, {len(self._ephemeral)} obtained values)"


MASKER = Masker()


def redact_url(text: str) -> str:
    """Credentials by their shape: secret query values and interaction path tokens in URLs, and the value of
    a JSON field named like a credential (``"interaction_token": "..."``)."""
    if ":" in text:
        text = _FIELD_RE.sub(lambda m: m.group(1) + MASK, text)
    if "=" in text:
        text = _PARAM_RE.sub(lambda m: m.group(1) + MASK, text)
    if "/webhooks/" in text or "/interactions/" in text:
        text = _PATH_RE.sub(lambda m: m.group(1) + MASK, text)
    return text


def redact(text: str) -> str:
    """``text`` with every known secret value and every credential-shaped URL part replaced."""
    return redact_url(MASKER.mask(text))


# ---- what gets registered ----------------------------------------------------------------------------


def _secret_values(node: Any) -> Iterable[str]:
    from pydantic import BaseModel, SecretStr

    if isinstance(node, SecretStr):
        yield node.get_secret_value()
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _secret_values(getattr(node, name))
    elif isinstance(node, Mapping):
        for item in node.values():
            yield from _secret_values(item)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _secret_values(item)


def protect_settings(settings: Settings) -> None:
    """Mask every ``SecretStr`` of the configuration (bots' credentials, backends' API keys ...)."""
    tiny = 0
    for value in _secret_values(settings):
        MASKER.add(value)
        tiny += 0 < len(value) < MIN_WORD
    if tiny:
        logging.getLogger("imrelay").warning(
            "%d configured secret(s) shorter than %d characters cannot be masked in logs", tiny, MIN_WORD
        )


_URL_SECRET_RE = re.compile(r"(?i)[?&;](?:" + "|".join(_SECRET_PARAMS) + r")=([^&#\s\"'<>]+)")


def protect_obtained(value: str | None) -> None:
    """Mask a token the process obtained (an access token, an interaction token ...)."""
    MASKER.add(value, ephemeral=True)


def protect_reply_handle(handle: ReplyHandleBase) -> None:
    """Mask the credentials a reply handle carries, as its model marks them: a credential field's value,
    and the secret parts of a credential URL (a session webhook's ``session``, a group robot webhook's
    ``key``, an interaction path's token)."""
    from .platforms.handle import Credential

    for how, value in handle.credentials():
        if how is Credential.VALUE:
            protect_obtained(value)
            continue
        for m in _URL_SECRET_RE.finditer(value):
            protect_obtained(m.group(1))
        for m in _PATH_RE.finditer(value):
            protect_obtained(value[m.end(1) : m.end()])


# ---- logs --------------------------------------------------------------------------------------------

_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROLS.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})
# In text that legitimately spans lines (a traceback, a stack) only line breaks and tabs stay.
_CONTROLS_KEEP_LINES = {c: v for c, v in _CONTROLS.items() if c not in (0x0A, 0x09)}


def escape_controls(text: str, *, keep_lines: bool = False) -> str:
    """Control characters as visible escapes: ``"a\\nb"`` -> ``"a\\\\nb"``, ESC -> ``\\x1b``."""
    return text.translate(_CONTROLS_KEEP_LINES if keep_lines else _CONTROLS)


class _Safe:
    """A log argument as it may be shown: its ``str`` and ``repr`` redacted, control characters escaped."""

    __slots__ = ("_value",)

    def __init__(self, value: object) -> None:
        self._value = value

    def __str__(self) -> str:
        return escape_controls(redact(str(self._value)))

    def __repr__(self) -> str:
        return escape_controls(redact(repr(self._value)))

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _safe_arg(value: object) -> object:
    if value is None or isinstance(value, bool | Number | _Safe):
        return value
    return _Safe(value)


class RedactingFilter(logging.Filter):
    """Masks secrets in a record (message, arguments, exception text, stack) and escapes control
    characters in its arguments. Never drops a record."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    if getattr(record, "_imrelay_redacted", False):
        return record
    setattr(record, "_imrelay_redacted", True)  # noqa: B010 - LogRecord declares no such field
    if isinstance(record.msg, str):
        # A format string keeps its placeholders: URL shapes (``?token=%s``) are redacted in the arguments.
        text = MASKER.mask(record.msg) if record.args else redact(record.msg)
        record.msg = escape_controls(text, keep_lines=True)
    else:
        record.msg = _Safe(record.msg)
    if isinstance(record.args, Mapping):
        record.args = {k: _safe_arg(v) for k, v in record.args.items()}
    elif record.args:
        record.args = tuple(_safe_arg(a) for a in record.args)
    if record.exc_info and not record.exc_text:
        record.exc_text = RedactingFilter._formatter.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = escape_controls(redact(record.exc_text), keep_lines=True)
    if record.stack_info:
        record.stack_info = escape_controls(redact(record.stack_info), keep_lines=True)
    return record


_installed = False


def install_log_redaction() -> None:
    """Redact every log record of the process: a :class:`RedactingFilter` on the root handlers, and the
    same redaction as the record factory (for loggers with their own handlers)."""
    global _installed
    flt = RedactingFilter()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(flt)
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(make(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    sys.excepthook = _excepthook


def _excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """An uncaught exception's traceback, printed as Python would, without secrets."""
    text = "".join(traceback.format_exception(kind, exc, tb))
    sys.stderr.write(escape_controls(redact(text), keep_lines=True))


# ---- traces ------------------------------------------------------------------------------------------

_URL_ATTRIBUTES = ("url.full", "http.url", "url.query", "url.path", "http.target")


def _scrub_value(key: str, value: AttributeValue) -> AttributeValue:
    header = _HEADER_ATTR_RE.match(key)
    if header and _SECRET_HEADER_RE.search(header.group(1)):
        return (MASK,) if isinstance(value, Sequence) and not isinstance(value, str) else MASK
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Sequence) and value and isinstance(value[0], str):
        return tuple(redact(str(v)) for v in value)
    return value


def scrub_attributes(attributes: Attributes) -> dict[str, AttributeValue]:
    return {k: _scrub_value(k, v) for k, v in (attributes or {}).items()}


def scrub_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of ``span`` with no credential in its name, attributes, events, links or status."""
    status = span.status
    if status.description:
        status = Status(status.status_code, redact(status.description))
    return ReadableSpan(
        name=redact(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=scrub_attributes(span.attributes),
        events=[Event(e.name, scrub_attributes(e.attributes), e.timestamp) for e in span.events],
        links=[Link(link.context, scrub_attributes(link.attributes)) for link in span.links],
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingSpanExporter(SpanExporter):
    """Another exporter behind a scrub of every span it is given."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([scrub_span(s) for s in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


async def httpx_request_hook(span: Span, request: Any) -> None:
    """Rewrite an HTTP client span's URL attributes without their credentials as the span starts."""
    if not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str):
            span.set_attribute(key, redact(value))
