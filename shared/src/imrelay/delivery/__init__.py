"""What a platform's delivery is (each platform's package has one): render a final reply into parts and
send one part; where the platform has media, fetch a message's attachments (:class:`MediaSource`, used by
the worker) and send an answer's images (:class:`MediaSink`, used by the sender).

A delivery raises the :mod:`imrelay.errors` upstream tree: ``TransientUpstreamError`` and
``RateLimitedError`` are retried with backoff, ``PermanentUpstreamError`` goes to the dead-letter subject.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import httpx
from nats.js.kv import KeyValue

from ..answer_streams import StreamStore
from ..bots import BotBase
from ..events import Attachment, ConnectionAnswer, ConnectionRequest, InboundMessage, ReplyChunk
from ..media import MediaRef
from ..media.fetch import Downloader, Fetched
from ..media.store import MediaStore
from ..sections import SenderConfig
from .tokens import TokenCache

if TYPE_CHECKING:
    from ..config import Settings


class Delivery(Protocol):
    platform: str
    bot_id: str

    def render(self, chunk: ReplyChunk) -> list[str]:
        """The messages to post for a final chunk, in order."""
        ...

    def limits(self, chunk: ReplyChunk) -> list[tuple[str, str]]:
        """The platform limits one message of this reply counts against: ``(scope, subject key)``."""
        ...

    async def send(self, chunk: ReplyChunk, part: str, index: int) -> None: ...


@runtime_checkable
class StreamingDelivery(Delivery, Protocol):
    """A platform that can show an answer while it grows (editing a message or a card)."""

    update_interval: float  # seconds between two updates of one answer (the platform's edit limit)

    async def update(self, chunk: ReplyChunk, text: str) -> None:
        """Show ``text``, the answer so far. Best effort: the final chunk always shows the whole answer."""
        ...


@runtime_checkable
class MediaSource(Protocol):
    """A platform whose messages' media the worker fetches by the platform's own method."""

    async def fetch_media(
        self, inbound: InboundMessage, attachment: Attachment, download: Downloader
    ) -> Fetched:
        """The attachment's bytes (``download.limit`` applies: :class:`~imrelay.media.MediaError`
        ``oversize`` past it). Raises ``MediaError`` (``download_failed``) when the platform refuses."""
        ...


@runtime_checkable
class MediaSink(Protocol):
    """A platform that can show an answer's images (and files) as such."""

    # True: the delivery shows ``chunk.media`` itself with the final text (e.g. inside a card, or in the
    # polled stream's last update); False: the sender calls :meth:`send_media` once for each, after the text
    media_inline: bool

    async def send_media(self, chunk: ReplyChunk, media: MediaRef, data: bytes, index: int) -> None:
        """Upload ``data`` the platform's way and send it to the chat of ``chunk``. Raises the upstream
        error tree like :meth:`Delivery.send`; ``MediaError`` (``unsupported``, ``oversize``) when the
        platform cannot take it."""
        ...


# Asks the connector holding a bot's long connection to send something on it (NATS request/reply); raises
# when no answer came (no owner, or none in time).
Requester = Callable[[ConnectionRequest], Awaitable[ConnectionAnswer]]


@dataclass(frozen=True, slots=True)
class DeliveryContext:
    """What every platform's delivery is built from: the sender's HTTP client, token cache and settings,
    the deliveries bucket (streamed answers' state), the answer streams platforms poll, and the RPC to a
    long connection's owner (for platforms that answer over it)."""

    settings: Settings
    client: httpx.AsyncClient
    tokens: TokenCache
    deliveries: KeyValue | None = None
    answer_streams: StreamStore | None = None
    requester: Requester | None = None
    media: MediaStore | None = None  # the media bucket (answers' images, read by inline deliveries)

    @property
    def cfg(self) -> SenderConfig:
        return self.settings.sender

    @property
    def http_timeout(self) -> float:
        return self.settings.sender.http_timeout_seconds

    @property
    def rate_limit_backoff(self) -> float:
        return self.settings.sender.rate_limit_backoff_seconds

    def api_base(self, bot: BotBase) -> str:
        from ..platforms import api_base

        return api_base(bot)

    def auth_base(self, bot: BotBase) -> str:
        from ..platforms import auth_base

        return auth_base(bot)
