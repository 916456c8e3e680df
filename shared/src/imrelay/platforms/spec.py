"""What a platform package declares: its :class:`PlatformSpec` (the manifest the services, the simulator,
the demo config and the chart are built from).

A spec is generic in the platform's bot model, so its hooks take that model as it is (no narrowing). The
hooks import the platform's heavier modules when first called: importing the registry loads only the bot
and reply handle models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..bots import BotBase
from ..media import MediaSupport
from ..sections import RateLimitConfig
from .handle import ReplyHandleBase

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from ..callbacks import Adapter
    from ..connections import Connection, ConnectionContext
    from ..delivery import Delivery, DeliveryContext

__all__ = [
    "Capabilities",
    "Ownership",
    "PlatformSpec",
    "RateScope",
    "SimMedia",
    "SimMessage",
    "SimRequest",
    "SimSend",
]

BotT = TypeVar("BotT", bound=BotBase)


class Ownership(StrEnum):
    """Who holds a bot's long connection."""

    SINGLE_OWNER = "single_owner"  # one connection per bot cluster-wide: a KV lease picks the connector
    ACTIVE_ACTIVE = "active_active"  # every connector replica holds its own; the platform spreads events


@dataclass(frozen=True, slots=True)
class Capabilities:
    callbacks: bool = True  # receives messages on the ingress's callback URL
    long_connection: Ownership | None = None  # receives them over a connection the connector dials
    edits: bool = False  # shows an answer while it grows (editing a message or a card, or a polled stream)
    markdown: bool = False  # has a markdown message for reply_format: markdown
    needs_token: bool = False  # calls its API with an access token the sender fetches and caches


@dataclass(frozen=True, slots=True)
class RateScope:
    """A platform limit the sender keeps to, by name in ``sender.rate_limits``."""

    name: str  # "<platform>.<per what>"
    default: RateLimitConfig
    meaning: str


@dataclass(frozen=True, slots=True)
class SimMedia:
    """A file a simulated user sends, already put into the simulator (``POST /sim/media``): the
    platform's simulated API serves it by ``id`` (as a media id, resource key, download code or the path
    of a URL, ``{sim_url}/sim/media/{id}``)."""

    kind: str  # image | file | voice | video
    id: str
    name: str
    size: int
    sha256: str
    md5: str
    mime: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class SimMessage:
    """A message a simulated user sends (``imrelay-sim send``): text, and media (``--image``/``--file``)."""

    text: str
    user: str
    msg_id: str  # the same id gives the same platform ids (a platform retry)
    now: float
    sim_url: str  # where the simulator plays the platform's API
    chat: str = ""  # a group chat's id; empty for a direct message
    media: tuple[SimMedia, ...] = ()  # the platform's package puts them in the message its own way


@dataclass(frozen=True, slots=True)
class SimSend:
    """``imrelay-sim send``: the message, where the ingress and the simulator are, how long to wait."""

    message: SimMessage
    ingress: str
    wait: float


@dataclass(frozen=True, slots=True)
class SimRequest:
    """A callback as the platform would send it to the ingress."""

    query: str
    headers: Mapping[str, str]
    body: bytes


def _no_token(bot: Any) -> str | None:
    return None


@dataclass(frozen=True, kw_only=True)
class PlatformSpec(Generic[BotT]):
    tags: tuple[str, ...]  # the ``platform:`` values this package serves
    title: str
    bot_model: type[BotT]
    reply_handle: type[ReplyHandleBase]  # where an answer goes: its ingress writes it, its delivery reads it
    api_base: Mapping[str, str]  # the public API's address, by tag
    auth_base: str | None = None  # where tokens come from, if not the API's address
    capabilities: Capabilities
    rate_scopes: tuple[RateScope, ...] = ()
    adapter: Callable[[BotT], Adapter]  # the ingress's verify/decrypt/parse for one bot
    delivery: Callable[[BotT, DeliveryContext], Delivery]  # the sender's way to answer
    # the long connection the connector runs for a ``mode: long_connection`` bot (one per attempt), if the
    # platform has one (``capabilities.long_connection`` says who holds it), and the outcomes it counts in
    # ``imrelay_connector_events_total`` besides the connector's own
    connection: Callable[[BotT, ConnectionContext], Connection] | None = None
    connection_events: tuple[str, ...] = ()
    token_key: Callable[[BotT], str | None] = _no_token  # the bot's access-token cache key, if it has one
    # the media its delivery fetches from messages (``MediaSource``) and sends (``MediaSink``), and limits
    media: MediaSupport = field(default_factory=MediaSupport)
    sim_routes: Callable[[Any, Callable[[], float]], list[BaseRoute]] | None = None  # (SimState, clock)
    sim_request: Callable[[BotT, SimMessage], SimRequest] | None = None
    # the query of the platform's URL check (a GET the ingress must answer with ``echo``), if it has one
    sim_url_check: Callable[[BotT, str, float], str] | None = None
    # a long-connection bot's message pushed down its connection, the answer shown (exit status)
    sim_push: Callable[[BotT, SimSend], int] | None = None
    # where the answer comes back in the callback's own response (a polled stream): show it (exit status)
    sim_answer: Callable[[BotT, SimSend, bytes], int] | None = None
    demo: str = ""  # the ``bots:`` entries of the demo config (YAML), played by the simulator
    # error codes of the platform's answers (as text) -> the anchor in docs/troubleshooting.md
    hints: Mapping[str, str] = field(default_factory=dict)
    # error codes -> what to fix, for `imrelay check-config --online`
    causes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.connection is None) != (self.capabilities.long_connection is None):
            raise ValueError(
                f"{self.title}: a long connection needs both capabilities.long_connection and connection"
            )
