"""The registry of platforms: one package each under :mod:`imrelay.platforms`, declared by its ``SPEC``
(:class:`~imrelay.platforms.spec.PlatformSpec`). The services, the simulator, the demo configuration and the
chart's schema are built from this list; adding a platform is adding its package and its line here
(docs/adding-a-platform.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from ..bots import BotBase
from ..sections import RateLimitConfig

# the registry: one line a platform
from . import dingtalk, discord, feishu, qq, wecom_aibot, wecom_app, wecom_group_robot
from .handle import ReplyHandleBase
from .spec import PlatformSpec

if TYPE_CHECKING:
    from ..callbacks import Adapter
    from ..delivery import Delivery, DeliveryContext

__all__ = [
    "SPECS",
    "PlatformSpec",
    "ReplyHandleBase",
    "adapter_for",
    "bot_union",
    "default_rate_limits",
    "delivery_for",
    "handle_union",
    "spec",
    "spec_for",
    "tags",
    "upgrade_handle",
]

SPECS: tuple[PlatformSpec[Any], ...] = tuple(
    p.SPEC for p in (wecom_app, wecom_group_robot, wecom_aibot, feishu, dingtalk, qq, discord)
)


@cache
def _by_tag() -> dict[str, PlatformSpec[Any]]:
    out: dict[str, PlatformSpec[Any]] = {}
    for s in SPECS:
        for tag in s.tags:
            if tag in out:
                raise RuntimeError(f"platform tag {tag!r} declared twice")
            out[tag] = s
    return out


def tags() -> list[str]:
    """Every ``platform:`` value a bot may have."""
    return list(_by_tag())


def spec(tag: str) -> PlatformSpec[Any]:
    try:
        return _by_tag()[tag]
    except KeyError:
        raise ValueError(f"unknown platform {tag!r} (known: {', '.join(tags())})") from None


def spec_for(bot: BotBase) -> PlatformSpec[Any]:
    return spec(bot.platform)


def bot_union() -> Any:
    """The type of one ``bots:`` entry: the platforms' bot models, told apart by ``platform``."""
    models = tuple(s.bot_model for s in SPECS)
    return Annotated[Union[models], Field(discriminator="platform")]  # noqa: UP007 - built at run time


def handle_union() -> Any:
    """The type of an event's reply handle: the platforms' handle models, told apart by ``kind``."""
    models = tuple(dict.fromkeys(s.reply_handle for s in SPECS))
    return Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007 - built at run time


def upgrade_handle(v1: Mapping[str, Any], platform: str) -> dict[str, Any] | None:
    """A version 1 reply handle (a plain mapping) of an event of ``platform`` as its model's input; None
    for an empty one (no handle)."""
    if not v1:
        return None
    return spec(platform).reply_handle.upgrade(v1, platform)


@cache
def default_rate_limits() -> dict[str, RateLimitConfig]:
    """The platforms' own limits by scope name; ``sender.rate_limits`` entries replace them."""
    return {scope.name: scope.default for s in SPECS for scope in s.rate_scopes}


def adapter_for(bot: BotBase) -> Adapter:
    """The ingress's verify/decrypt/parse for a bot."""
    return spec_for(bot).adapter(bot)


def delivery_for(bot: BotBase, ctx: DeliveryContext) -> Delivery:
    """The sender's way to answer on a bot's platform."""
    return spec_for(bot).delivery(bot, ctx)


def api_base(bot: BotBase) -> str:
    """The platform API a bot calls: its ``api_base``, else the platform's public address."""
    return (bot.api_base or spec_for(bot).api_base[bot.platform]).rstrip("/")


def auth_base(bot: BotBase) -> str:
    """Where a bot's access tokens come from: ``auth_base``, else the platform's token host (unless the
    bot names its own API address), else the API."""
    if bot.auth_base:
        return bot.auth_base.rstrip("/")
    default = spec_for(bot).auth_base
    return default if default and not bot.api_base else api_base(bot)
