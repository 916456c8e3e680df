"""The worker's media step: a message's attachments fetched, checked and stored before the backend is
asked; an answer's images fetched (through the SSRF guard) and stored before the final chunk is published.

Inbound, for each attachment of a fetchable kind (at most ``media.max_per_message``):

1. a voice message the platform transcribed is read as its transcript (nothing is downloaded);
2. ``in/<inbound id>/<n>`` already in the media bucket (a redelivered message) is reused;
3. a size the platform declared above the limit (``media.max_bytes`` and the platform's own) is refused
   before anything is downloaded;
4. the platform's package fetches the bytes (``MediaSource.fetch_media``), capped at the limit while
   reading; the type is sniffed from the bytes, and they are stored with the bucket's TTL.

Whatever is not read becomes one line for the user and a note for the model; nothing fails the message,
except the bucket being unreachable (the message is then retried like any other NATS failure).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import httpx

from imrelay.bots import BotBase
from imrelay.delivery import Delivery, MediaSource
from imrelay.events import Attachment, InboundMessage
from imrelay.media import MEDIA_KINDS, MediaError, MediaKind, MediaProblem, MediaRef, user_line
from imrelay.media.fetch import Downloader, Guard, fetch_url
from imrelay.media.links import image_links, replace_links
from imrelay.media.sniff import IMAGE_TYPES, extension, kind_of, sniff
from imrelay.media.store import MediaStore
from imrelay.platforms import spec_for
from imrelay.redact import redact
from imrelay.sections import MediaConfig
from imrelay.telemetry import MEDIA, MEDIA_BYTES

from .backends import InputMedia

log = logging.getLogger("imrelay.worker")

__all__ = ["Gathered", "InputMedia", "MediaStep", "Unread"]


@dataclass(frozen=True, slots=True)
class Unread:
    kind: str
    problem: MediaProblem
    limit: int | None = None

    @property
    def line(self) -> str:
        return user_line(self.kind, self.problem, limit=self.limit)


@dataclass(slots=True)
class Gathered:
    media: list[InputMedia] = field(default_factory=list)
    transcripts: list[str] = field(default_factory=list)  # voice messages, as text
    unread: list[Unread] = field(default_factory=list)
    voice: list[InputMedia] = field(default_factory=list)  # voice without a transcript, for speech-to-text


def _name(attachment: Attachment, index: int, mime: str, filename: str | None) -> str:
    name = (attachment.name or filename or "").strip().replace("/", "_").replace("\\", "_")[:200]
    return name or f"{attachment.kind}-{index + 1}{extension(mime)}"


@dataclass
class MediaStep:
    cfg: MediaConfig
    store: MediaStore
    deliveries: dict[str, Delivery]
    client: httpx.AsyncClient  # the worker's client, for the platforms' APIs
    direct: httpx.AsyncClient  # no proxies: guarded URLs are connected to directly

    def __post_init__(self) -> None:
        self.guard = Guard(self.cfg.allow_private_networks)

    def limit(self, bot: BotBase, kind: MediaKind) -> int:
        platform = spec_for(bot).media.inbound_limits.get(kind)
        return min(self.cfg.max_bytes, platform) if platform else self.cfg.max_bytes

    def _count(self, inbound: InboundMessage, kind: str, outcome: str, size: int = 0) -> None:
        kind = kind if kind in MEDIA_KINDS else "file"
        MEDIA.labels(direction="in", platform=inbound.platform, kind=kind, outcome=outcome).inc()
        if size:
            MEDIA_BYTES.labels(direction="in", platform=inbound.platform, kind=kind).inc(size)

    async def gather(self, inbound: InboundMessage, bot: BotBase) -> Gathered:
        out = Gathered()
        fetchable = [a for a in inbound.attachments if a.kind in MEDIA_KINDS]
        for index, attachment in enumerate(fetchable[: self.cfg.max_per_message]):
            if attachment.kind == MediaKind.VOICE and attachment.transcript:
                out.transcripts.append(attachment.transcript)
                self._count(inbound, attachment.kind, "transcribed")
                continue
            got = await self._one(inbound, bot, attachment, index, out)
            if got is None:
                continue
            if got.ref.kind is MediaKind.VOICE:
                out.voice.append(got)
            else:
                out.media.append(got)
        for attachment in fetchable[self.cfg.max_per_message :]:
            out.unread.append(Unread(attachment.kind, MediaProblem.UNSUPPORTED))
        return out

    async def _one(
        self, inbound: InboundMessage, bot: BotBase, attachment: Attachment, index: int, out: Gathered
    ) -> InputMedia | None:
        kind = MediaKind(attachment.kind)
        key = f"in/{inbound.id}/{index}"
        found = await self.store.find(key)
        if found is not None:
            self._count(inbound, kind, "reused")
            return InputMedia(found, await self.store.get(found))
        limit = self.limit(bot, kind)
        delivery = self.deliveries.get(bot.id)
        try:
            if not self.cfg.enabled or not isinstance(delivery, MediaSource):
                raise MediaError(MediaProblem.UNSUPPORTED, f"{inbound.platform} media is not fetched")
            if attachment.size is not None and attachment.size > limit:
                raise MediaError(MediaProblem.OVERSIZE, f"{attachment.size} bytes declared")
            download = Downloader(self.client, self.direct, self.guard, limit, self.cfg.fetch_timeout_seconds)
            fetched = await delivery.fetch_media(inbound, attachment, download)
            if len(fetched.data) > limit:
                raise MediaError(MediaProblem.OVERSIZE, f"{len(fetched.data)} bytes")
        except Exception as exc:  # a platform's failure is the user's line, never a failed message
            if not isinstance(exc, MediaError):
                log.warning(
                    "inbound %s: %s %d: download failed (%s)",
                    inbound.id,
                    kind.value,
                    index,
                    type(exc).__name__,
                )
                exc = MediaError(MediaProblem.DOWNLOAD_FAILED, type(exc).__name__)
            log.info(
                "inbound %s: %s %d not read (%s)", inbound.id, kind.value, index, redact(exc.detail or "")
            )
            self._count(inbound, kind, exc.problem.value)
            out.unread.append(
                Unread(kind, exc.problem, limit if exc.problem is MediaProblem.OVERSIZE else None)
            )
            return None
        mime = sniff(fetched.data)
        stored_kind = kind_of(mime, kind) if kind is not MediaKind.FILE else MediaKind.FILE
        if kind is MediaKind.IMAGE and stored_kind is not MediaKind.IMAGE:
            stored_kind = MediaKind.FILE  # "an image" that is not one is read as a file
        ref = await self.store.put(
            key,
            fetched.data,
            kind=stored_kind,
            name=_name(attachment, index, mime, fetched.filename),
            mime=mime,
        )
        self._count(inbound, kind, "ok", ref.size)
        return InputMedia(ref, fetched.data)

    # ---- answers' images --------------------------------------------------------------------------

    async def answer_images(
        self, platform: str, reply_id: str, text: str
    ) -> tuple[str, list[MediaRef], list[str]]:
        """The answer's text with the images it links sent as images: (text without those links, the
        stored images, one line for each image that could not be fetched)."""
        links = image_links(text, self.cfg.max_per_message)
        if not links or not self.cfg.enabled:
            return text, [], []
        refs: list[MediaRef] = []
        lines: list[str] = []
        replaced: dict[str, str] = {}
        for index, link in enumerate(links):
            try:
                ref = await self.answer_image(platform, reply_id, index, link.url, link.alt)
            except MediaError as exc:
                log.info("reply %s: answer image %d not fetched (%s)", reply_id, index, exc.problem.value)
                MEDIA.labels(
                    direction="out", platform=platform, kind="image", outcome=exc.problem.value
                ).inc()
                lines.append(
                    user_line(
                        MediaKind.IMAGE,
                        exc.problem,
                        limit=self.cfg.max_bytes if exc.problem is MediaProblem.OVERSIZE else None,
                        outbound=True,
                    )
                )
                replaced[link.url] = link.alt
                continue
            refs.append(ref)
            replaced[link.url] = link.alt
        return replace_links(text, replaced), refs, lines

    async def answer_image(
        self, platform: str, reply_id: str, index: int, url: str, alt: str = ""
    ) -> MediaRef:
        key = f"out/{reply_id}/{index}"
        found = await self.store.find(key)
        if found is not None:
            return found
        try:
            async with asyncio.timeout(self.cfg.fetch_timeout_seconds):
                fetched = await fetch_url(
                    self.direct,
                    url,
                    guard=self.guard,
                    limit=self.cfg.max_bytes,
                    max_redirects=self.cfg.max_redirects,
                )
        except TimeoutError as exc:
            raise MediaError(MediaProblem.DOWNLOAD_FAILED, "timed out") from exc
        mime = sniff(fetched.data)
        if mime not in IMAGE_TYPES:
            raise MediaError(MediaProblem.UNSUPPORTED, f"not an image: {mime}")
        name = (fetched.filename or alt or "image").strip()[:100].replace("/", "_")
        if "." not in name:
            name += extension(mime)
        return await self.store.put(key, fetched.data, kind=MediaKind.IMAGE, name=name, mime=mime)

    # ---- voice ------------------------------------------------------------------------------------

    async def transcribe(self, inbound: InboundMessage, voice: InputMedia) -> str | None:
        """A voice message's text from the configured speech-to-text endpoint (OpenAI-compatible
        ``/audio/transcriptions``); None when none is configured or it failed (the user is told)."""
        stt = self.cfg.speech_to_text
        if stt is None:
            return None
        headers = {"Authorization": f"Bearer {stt.api_key.get_secret_value()}"} if stt.api_key else {}
        try:
            resp = await self.client.post(
                f"{stt.base_url.rstrip('/')}/audio/transcriptions",
                headers=headers,
                files={"file": (voice.ref.name, voice.data, voice.ref.mime)},
                data={"model": stt.model},
                timeout=stt.timeout_seconds,
            )
            resp.raise_for_status()
            text = resp.json().get("text")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("inbound %s: speech to text failed (%s)", inbound.id, type(exc).__name__)
            return None
        if not isinstance(text, str) or not text.strip():
            return None
        self._count(inbound, MediaKind.VOICE, "transcribed")
        return text.strip()
