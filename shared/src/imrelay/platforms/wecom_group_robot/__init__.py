"""WeCom group robot (群机器人): XML callbacks, answers posted to the group's webhook."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...media import MediaKind, MediaSupport
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


_FILE_LIMIT = 20 * 1024 * 1024


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
    from ..wecom.sim import encrypted_post, robot_media_xml, robot_text_xml

    chat_id = m.chat or f"wrk{bot.id}"
    webhook = f"{m.sim_url}/cgi-bin/webhook/send?key={bot.id}"
    if any(media.kind != "image" for media in m.media):
        raise SystemExit("imrelay-sim: a WeCom group robot receives pictures only (no files, voice, video)")
    if m.media:  # a picture alone as an image message, with text as a mixed one
        text = f"@{bot.id} {m.text}" if m.text else ""
        plain = robot_media_xml(chat_id, "group", m.user, m.user, text, m.media, m.msg_id, webhook, m.sim_url)
    else:
        plain = robot_text_xml(chat_id, "group", m.user, m.user, f"@{bot.id} {m.text}", m.msg_id, webhook)
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
    media=MediaSupport(
        inbound=frozenset({MediaKind.IMAGE}),
        outbound=frozenset({MediaKind.IMAGE}),  # answers send images
        # an image goes inline up to 2 MB (JPG/PNG), as an uploaded file up to 20 MB beyond
        limits={MediaKind.IMAGE: _FILE_LIMIT},
        note="pictures only in messages; answers' images above 2 MB (or not JPG/PNG) go as files",
    ),
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
