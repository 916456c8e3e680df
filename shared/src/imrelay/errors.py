"""The imrelay error tree, drawn once.

    ImrelayError
    ├── ConfigError                 bad configuration file (carries the dotted path of the bad key)
    │   └── NatsRefusedError        NATS refused the credentials or the TLS handshake
    ├── CallbackError               a platform callback we refuse (mapped to a 4xx by the ingress)
    │   ├── VerifyError             signature / token / receive-id mismatch           -> 401
    │   │   ├── ReplayError         signed timestamp outside the window, signature reused -> 401
    │   │   └── UnknownBotError     no bot with that id                               -> 404
    │   ├── DecryptError            ciphertext that does not decrypt cleanly          -> 400
    │   ├── ParseError              well-signed but malformed payload                 -> 400
    │   └── BodyTooLarge            a body over ``ingress.max_body_bytes``            -> 413
    ├── PublishUnavailable          JetStream did not confirm a message: the platform retries (503)
    ├── NotConfiguredError          a message for a bot this service's configuration does not have
    ├── DeliveryBusy                another copy of a reply part is being posted right now: look again later
    ├── ServiceError                a service cannot run (its admin port cannot be served)
    ├── CheckFailed                 ``imrelay check-config`` found a dependency that does not work
    ├── Kicked                      a long connection replaced by another client's (imrelay.connections)
    ├── CredentialsRefused          a platform refused a long connection's credentials (imrelay.connections)
    ├── BackendError                an LLM backend failed (status / message from the provider)
    └── UpstreamError               a platform API answered with an error code
        ├── TokenExpiredError       the access token is invalid or expired: refresh and retry once
        ├── RateLimitedError        the platform's frequency limit: back off and retry
        ├── TransientUpstreamError  timeouts, 5xx, "system busy": retry with backoff
        │   └── TokenUnavailable    the token endpoint failed recently: every replica backs off together
        └── PermanentUpstreamError  bad recipient, bad credentials, rejected message: dead-letter

Error messages never contain secrets or decrypted payloads; the ingress never echoes them to callers.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BodyTooLarge",
    "CallbackError",
    "CheckFailed",
    "ConfigError",
    "DecryptError",
    "DeliveryBusy",
    "ImrelayError",
    "NatsRefusedError",
    "NotConfiguredError",
    "ParseError",
    "PermanentUpstreamError",
    "PublishUnavailable",
    "RateLimitedError",
    "ReplayError",
    "ServiceError",
    "TokenExpiredError",
    "TokenUnavailable",
    "TransientUpstreamError",
    "UnknownBotError",
    "UpstreamError",
    "VerifyError",
]

from collections.abc import Sequence


class ImrelayError(Exception):
    """Base of every error imrelay raises on purpose."""


class ConfigError(ImrelayError):
    """The configuration file is invalid; ``path`` is the dotted path of the (first) bad key, ``problems``
    every ``(path, message)`` found, so all of them can be fixed at once."""

    def __init__(self, path: str, message: str, *, more: Sequence[tuple[str, str]] = ()) -> None:
        self.path = path
        self.message = message
        self.problems = [(path, message), *more]
        lines = [f"{p}: {m}" if p else m for p, m in self.problems]
        text = lines[0] if len(lines) == 1 else f"{len(lines)} problems: " + "; ".join(lines)
        super().__init__(text)


class NatsRefusedError(ConfigError):
    """NATS refused this service's credentials or TLS settings: a configuration error, not an outage."""

    def __init__(self, servers: str, reason: str) -> None:
        super().__init__(
            "nats",
            f"{servers} refused the connection: {reason} (check nats.auth / IMRELAY_NATS_* and nats.tls)",
        )


class CallbackError(ImrelayError):
    """A platform callback that must be refused. ``code`` is the platform's own error code if any."""

    status_code = 400

    def __init__(self, reason: str, code: int | None = None) -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason if code is None else f"{reason} ({code})")


class VerifyError(CallbackError):
    """Signature, token or receive-id mismatch: the request is not from the platform we expect."""

    status_code = 401


class ReplayError(VerifyError):
    """An authentic request replayed: its signed timestamp is outside the window, or its signature was
    already used with another body."""


class UnknownBotError(VerifyError):
    status_code = 404


class DecryptError(CallbackError):
    """The ciphertext is signed correctly but does not decrypt into a valid message."""


class ParseError(CallbackError):
    """The payload is authentic but malformed or not a message we understand."""


class BodyTooLarge(CallbackError):
    """The callback's body is larger than the ingress accepts (``ingress.max_body_bytes``)."""

    status_code = 413

    def __init__(self, reason: str = "body too large", code: int | None = None) -> None:
        super().__init__(reason, code)


class PublishUnavailable(ImrelayError):
    """JetStream did not confirm the message: the platform must retry later (HTTP 503)."""


class NotConfiguredError(ImrelayError):
    """A message names a bot this service's configuration does not have (configurations out of step)."""


class DeliveryBusy(ImrelayError):
    """Another copy of this reply part is being posted right now."""


class ServiceError(ImrelayError):
    """A service cannot run as configured, e.g. its admin port cannot be served."""


class CheckFailed(ImrelayError):
    """A check of ``imrelay check-config`` failed; the message says what to fix."""


class BackendError(ImrelayError):
    """An LLM backend call failed. ``retryable`` says whether trying again may help."""

    def __init__(
        self, backend: str, message: str, *, status: int | None = None, retryable: bool = False
    ) -> None:
        self.backend = backend
        self.status = status
        self.retryable = retryable
        super().__init__(f"{backend}: {message}" + (f" (HTTP {status})" if status else ""))


class UpstreamError(ImrelayError):
    """A platform API answered with an error. ``retry_after`` is seconds, if the platform said."""

    def __init__(
        self, platform: str, code: int | str, message: str = "", retry_after: float | None = None
    ) -> None:
        self.platform = platform
        self.code = code
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"{platform} error {code}: {message}")


class TokenExpiredError(UpstreamError):
    pass


class RateLimitedError(UpstreamError):
    pass


class TransientUpstreamError(UpstreamError):
    pass


class PermanentUpstreamError(UpstreamError):
    pass


class TokenUnavailable(TransientUpstreamError):
    """The token endpoint failed recently; nobody asks it again before ``retry_after`` seconds."""
