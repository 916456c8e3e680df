"""What a NATS outage looks like in the logs: the servers' URLs, then fewer and fewer lines.

The clients reconnect every half second or so; logging every attempt would bury everything else. An
outage logs the disconnection, the first failed attempt, then the 2nd, 4th, 8th ... and every
``every``-th after that, each with the URLs, the attempts so far and how long it has lasted; the
reconnection logs how long the outage was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["OutageLog", "redact_url", "should_log"]

TROUBLESHOOTING = "docs/troubleshooting.md#nats-unreachable"


def should_log(attempt: int, every: int = 120) -> bool:
    """Log failed attempt number ``attempt`` (1, 2, 4, 8 ... then every ``every``-th)."""
    return attempt > 0 and (attempt & (attempt - 1) == 0 or attempt % every == 0)


def redact_url(url: str) -> str:
    """``nats://user:password@host`` without the password (a token in place of the user, likewise)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    if ":" in creds:
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return f"{scheme}://***@{host}"


class OutageLog:
    """NATS client callbacks (``error_cb``, ``disconnected_cb``, ``reconnected_cb``) that log an outage
    at a falling rate."""

    def __init__(
        self,
        logger: logging.Logger,
        servers: list[str],
        *,
        every: int = 120,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = logger
        self.urls = ", ".join(redact_url(s) for s in servers)
        self.every = every
        self.clock = clock
        self.failures = 0
        self.since: float | None = None

    async def error_cb(self, exc: Exception) -> None:
        self.failures += 1
        if self.since is None:
            self.since = self.clock()
        if should_log(self.failures, self.every):
            self.log.warning(
                "NATS at %s unreachable: %s (%d failed attempt(s) in %.0fs, still retrying; see %s)",
                self.urls,
                type(exc).__name__,
                self.failures,
                self.clock() - self.since,
                TROUBLESHOOTING,
            )

    async def disconnected_cb(self) -> None:
        if self.since is None:
            self.since = self.clock()
        # also called when the service closes its connection: failed attempts follow if NATS went away
        self.log.info("disconnected from NATS at %s", self.urls)

    async def reconnected_cb(self) -> None:
        lasted = self.clock() - self.since if self.since is not None else 0.0
        self.log.info(
            "reconnected to NATS at %s after %.1fs (%d failed attempt(s))", self.urls, lasted, self.failures
        )
        self.failures = 0
        self.since = None

    def connected(self) -> None:
        """The first connection succeeded (after the failed attempts logged so far, if any)."""
        if self.failures:
            self.log.info("connected to NATS at %s after %d failed attempt(s)", self.urls, self.failures)
        self.failures = 0
        self.since = None
