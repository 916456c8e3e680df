"""DingTalk (钉钉) robots: signed HTTP callbacks answered through the message's session webhook, or the
robot API with an access token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...sections import RateLimitConfig
from ..spec import Capabilities, PlatformSpec, RateScope, SimMessage, SimRequest
from .config import DingTalkBot
from .handle import DingTalkHandle

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.routing import BaseRoute

    from ...callbacks import Adapter
    from ...delivery import Delivery, DeliveryContext


def _adapter(bot: DingTalkBot) -> Adapter:
    from .ingress import DingTalkAdapter

    return DingTalkAdapter.from_bot(bot)


def _delivery(bot: DingTalkBot, ctx: DeliveryContext) -> Delivery:
    from .delivery import DingTalkDelivery

    return DingTalkDelivery.from_bot(bot, ctx)


def _token_key(bot: DingTalkBot) -> str:
    from ...subjects import kv_key

    return kv_key("dingtalk", bot.credentials.app_key)


def _sim_routes(state: Any, clock: Callable[[], float]) -> list[BaseRoute]:
    from .sim import routes

    return list(routes(state, clock))


def _sim_request(bot: DingTalkBot, m: SimMessage) -> SimRequest:
    from .sim import callback

    headers, body = callback(
        bot, m.text, m.user, m.chat or f"cid_{m.user}", bool(m.chat), f"msg{m.msg_id}", m.now, m.sim_url
    )
    return SimRequest("", headers, body)


SPEC = PlatformSpec[DingTalkBot](
    tags=("dingtalk",),
    title="DingTalk",
    bot_model=DingTalkBot,
    reply_handle=DingTalkHandle,
    api_base={"dingtalk": "https://api.dingtalk.com"},
    capabilities=Capabilities(needs_token=True),
    rate_scopes=(
        RateScope(
            "dingtalk.per_robot",
            RateLimitConfig(limit=20, window_seconds=60),
            "messages one robot may send a minute",
        ),
    ),
    adapter=_adapter,
    delivery=_delivery,
    token_key=_token_key,
    sim_routes=_sim_routes,
    sim_request=_sim_request,
    demo="""\
  - id: demo-dingtalk
    platform: dingtalk
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {app_key: dingdemo0001, app_secret: demo-dingtalk-secret}
""",
)
