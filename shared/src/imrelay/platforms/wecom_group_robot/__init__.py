"""WeCom group robot (群机器人): XML callbacks, answers posted to the group's webhook."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...sections import RateLimitConfig
from ..spec import Capabilities, PlatformSpec, RateScope, SimMessage, SimRequest
from ..wecom.config import API_BASE, HINTS
from .config import WeComGroupRobotBot
from .handle import WeComGroupRobotHandle

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.routing import BaseRoute

    from ...callbacks import Adapter
    from ...delivery import Delivery, DeliveryContext


def _adapter(bot: WeComGroupRobotBot) -> Adapter:
    from .ingress import WeComGroupRobotAdapter

    return WeComGroupRobotAdapter.from_bot(bot)


def _delivery(bot: WeComGroupRobotBot, ctx: DeliveryContext) -> Delivery:
    from .delivery import WeComGroupRobotDelivery

    return WeComGroupRobotDelivery.from_bot(bot, ctx)


def _sim_routes(state: Any, clock: Callable[[], float]) -> list[BaseRoute]:
    from .sim import routes

    return routes(state, clock)


def _sim_request(bot: WeComGroupRobotBot, m: SimMessage) -> SimRequest:
    from ..wecom.crypto import crypto_for
    from ..wecom.sim import encrypted_post, robot_text_xml

    chat_id = m.chat or f"wrk{bot.id}"
    plain = robot_text_xml(
        chat_id,
        "group",
        m.user,
        m.user,
        f"@{bot.id} {m.text}",
        m.msg_id,
        f"{m.sim_url}/cgi-bin/webhook/send?key={bot.id}",
    )
    cb = encrypted_post(crypto_for(bot.credentials), plain, int(m.now))
    return SimRequest(cb.query, {"Content-Type": "text/xml"}, cb.body)


def _sim_url_check(bot: WeComGroupRobotBot, echo: str, now: float) -> str:
    from ..wecom.sim import url_check

    return url_check(bot.credentials, echo, now)


SPEC = PlatformSpec[WeComGroupRobotBot](
    tags=("wecom_group_robot",),
    title="WeCom group robot",
    bot_model=WeComGroupRobotBot,
    reply_handle=WeComGroupRobotHandle,
    api_base={"wecom_group_robot": API_BASE},
    capabilities=Capabilities(markdown=True),
    rate_scopes=(
        RateScope(
            "wecom_group_robot.per_webhook",
            RateLimitConfig(limit=20, window_seconds=60),
            "messages one group's webhook takes a minute",
        ),
    ),
    adapter=_adapter,
    delivery=_delivery,
    sim_routes=_sim_routes,
    sim_request=_sim_request,
    sim_url_check=_sim_url_check,
    hints=HINTS,
    demo="""\
  - id: demo-robot
    platform: wecom_group_robot
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {token: demorobot, encoding_aes_key: GFEDCBA9876543210zyxwvutsrqponmlkjihgfedcba}
""",
)
