"""What a platform's long connection is (each platform that has one declares it in its package's spec,
``PlatformSpec.connection``): the connector (``imrelay-connector``) supervises it, the platform's package
speaks the platform's protocol.

One :class:`Connection` object is one attempt: the connector builds it, calls :meth:`Connection.run`, and
builds a new one to reconnect. ``run`` dials, authenticates, answers the platform's pings, and hands every
message that arrives to the :data:`Sink`, which returns only once JetStream has stored it (its PubAck), so a
platform that wants an acknowledgement gets it only after that. It calls :meth:`Health.up` once the
platform accepted the connection, and it ends only by raising:

* :class:`Kicked`: the platform gave the bot's connection to another client (another instance runs the
  bot); the connector stands down for ``connector.kick_holdoff_seconds``;
* :class:`CredentialsRefused`: the platform refused the bot's credentials, a configuration error; the
  connector tries again every ``connector.refused_retry_seconds``;
* anything else: the transport failed; the connector reconnects with backoff.

Answers that must go out on the connection (a platform that streams replies over it) come from the sender
as NATS requests (:class:`~imrelay.events.ConnectionRequest`) to ``imrelay.conn.<platform>.<bot>``, which
the connector serves while the connection is up by calling :meth:`Connection.send`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ImrelayError
from .events import ConnectionAnswer, InboundMessage
from .sections import ConnectorConfig

__all__ = ["Connection", "ConnectionContext", "CredentialsRefused", "Health", "Kicked", "Sink"]

# Stores one message in JetStream; returns once stored (True: it was there already, a platform retry).
Sink = Callable[[InboundMessage], Awaitable[bool]]


class Kicked(ImrelayError):
    """The platform replaced this connection with a newer one of the same bot (``signal``: how it said so)."""

    def __init__(self, signal: str = "") -> None:
        super().__init__(signal)
        self.signal = signal


class CredentialsRefused(ImrelayError):
    """The platform refused the bot's credentials: ``detail`` is its answer, ``fix`` which keys to check."""

    def __init__(self, detail: str, fix: str = "check the bot's credentials") -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


class Health(Protocol):
    """How a connection reports to the connector."""

    async def up(self) -> None:
        """The platform accepted the connection: it is serving (replies are routed to it from now on)."""
        ...

    def event(self, outcome: str) -> None:
        """Count a platform event of the connection (``imrelay_connector_events_total{outcome}``)."""
        ...


class Connection(Protocol):
    async def run(self, sink: Sink, health: Health) -> None:
        """Connect and serve until the connection ends; ends only by raising (see the module)."""
        ...

    async def send(self, payload: dict[str, Any]) -> ConnectionAnswer:
        """Send what the sender asked for (the platform's own payload) on the connection; the answer says
        whether the platform took it."""
        ...


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    """What every platform's connection is built from."""

    cfg: ConnectorConfig
