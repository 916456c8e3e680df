"""QQ bots (QQ 机器人, QQ Open Platform): Ed25519-signed webhooks, passive replies with an app access
token. QQ has retired its WebSocket push for new bots, so there is no long-connection mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...media import MediaKind, MediaSupport
from ...sections import RateLimitConfig
from ..spec import Capabilities, PlatformSpec, RateScope, SimMessage, SimRequest
from .config import QQBot
from .handle import QQHandle

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.routing import BaseRoute

    from ...callbacks import Adapter
    from ...delivery import Delivery, DeliveryContext


_MB = 1024 * 1024


def _adapter(bot: QQBot) -> Adapter:
    from .ingress import QQAdapter

    return QQAdapter.from_bot(bot)


def _delivery(bot: QQBot, ctx: DeliveryContext) -> Delivery:
    from .delivery import QQDelivery

    return QQDelivery.from_bot(bot, ctx)


def _token_key(bot: QQBot) -> str:
    from ...subjects import kv_key

    return kv_key("qq", bot.credentials.app_id)


def _sim_routes(state: Any, clock: Callable[[], float]) -> list[BaseRoute]:
    from .sim import routes

    return list(routes(state, clock))


def _sim_request(bot: QQBot, m: SimMessage) -> SimRequest:
    from .sim import callback

    headers, body = callback(
        bot, m.text, m.user, m.chat, f"ROBOT1.0_{m.msg_id}", m.now, media=m.media, sim_url=m.sim_url
    )
    return SimRequest("", headers, body)


SPEC = PlatformSpec[QQBot](
    tags=("qq",),
    title="QQ",
    bot_model=QQBot,
    reply_handle=QQHandle,
    api_base={"qq": "https://api.sgroup.qq.com"},
    auth_base="https://bots.qq.com",
    capabilities=Capabilities(needs_token=True),
    rate_scopes=(
        RateScope(
            "qq.per_channel",
            RateLimitConfig(limit=5, window_seconds=1),
            "messages one channel or group takes a second",
        ),
    ),
    adapter=_adapter,
    delivery=_delivery,
    media=MediaSupport(
        inbound=frozenset({MediaKind.IMAGE, MediaKind.FILE, MediaKind.VOICE, MediaKind.VIDEO}),
        outbound=frozenset({MediaKind.IMAGE}),
        limits={MediaKind.IMAGE: 30 * _MB},  # the upload's image limit (answers send images only)
        note="answers' images one-to-one and in groups (not guild channels); voice as QQ's recognition",
    ),
    token_key=_token_key,
    sim_routes=_sim_routes,
    sim_request=_sim_request,
    demo="""\
  - id: demo-qq
    platform: qq
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    auth_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {app_id: "102030405", app_secret: demoqqsecret01234567}
""",
)
