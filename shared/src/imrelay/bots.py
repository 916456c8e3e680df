"""What every bot entry of the configuration has, whatever its platform. Each platform's package
(:mod:`imrelay.platforms`) subclasses :class:`BotBase` with its ``platform`` tag(s) and credentials."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .sections import ConfigModel

__all__ = ["BOT_ID_RE", "BotBase", "ConfigModel", "PathValueError"]

BOT_ID_RE = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"


class PathValueError(ValueError):
    """A validation error about one key below the model that raises it (``path`` is relative to it)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


class BotBase(ConfigModel):
    id: Annotated[str, Field(pattern=BOT_ID_RE)]
    # The bot's platform; it decides which `credentials` and other keys apply.
    platform: str
    credentials: ConfigModel  # The platform's credentials for this bot.
    backend: str = "default"
    api_base: str | None = None  # the platform's API, if not its public default (a private deployment)
    auth_base: str | None = None  # where access tokens come from, if not api_base (and not the default)
    mode: Literal["callback", "long_connection"] = "callback"
    system_prompt: str | None = None
    model: str | None = None  # overrides the backend's model for this bot
    temperature: float | None = Field(default=None, ge=0, le=2)
    answer_timeout_seconds: float | None = Field(default=None, gt=0)  # overrides worker's
    # Platforms that cannot edit a message first show this when the answer's first words take longer than
    # thinking_after_seconds (off when empty).
    thinking_message: str | None = None
    thinking_after_seconds: float = Field(default=3.0, gt=0)
    # markdown: answers go out as the platform's markdown message where it has one; text is the safe
    # default (some platforms show markdown only in some of their clients)
    reply_format: Literal["text", "markdown"] = "text"
    # Callbacks whose signed timestamp is further than this from the ingress's clock are refused as replays
    # (on every platform that signs a timestamp). 0 turns the check off where the platform has no window of
    # its own; a platform's own window always applies.
    replay_window_seconds: float = Field(default=300.0, ge=0)

    def start_warnings(self) -> list[str]:
        """What a service logs at WARNING when it starts with this bot (a risky setting)."""
        return []
