"""One module per platform: pure verify / decrypt / parse / normalize, no I/O.

Each adapter turns a :class:`CallbackRequest` into a :class:`CallbackResult` (the HTTP answer for the
platform, and the normalized message to store, if any) or raises a
:class:`~imrelay.errors.CallbackError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from imrelay.config import BotConfig, Platform
from imrelay.events import InboundMessage


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    method: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    now: float


@dataclass(frozen=True, slots=True)
class CallbackResult:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"
    message: InboundMessage | None = None
    dedupe_key: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)


class Adapter(Protocol):
    def handle(self, request: CallbackRequest) -> CallbackResult: ...


AdapterFactory = Callable[[BotConfig], Adapter]


def adapter_for(bot: BotConfig) -> Adapter:
    """The adapter for a bot; raises ValueError for a platform this version cannot receive."""
    from . import wecom_app, wecom_group_robot

    factories: Mapping[Platform, AdapterFactory] = {
        Platform.WECOM_APP: wecom_app.WeComAppAdapter.from_bot,
        Platform.WECOM_GROUP_ROBOT: wecom_group_robot.WeComGroupRobotAdapter.from_bot,
    }
    factory = factories.get(bot.platform)
    if factory is None:
        raise ValueError(f"platform {bot.platform.value!r} is not supported by this ingress yet")
    return factory(bot)
