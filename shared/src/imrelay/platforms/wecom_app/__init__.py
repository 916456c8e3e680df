"""WeCom self-built app (企业微信自建应用): XML callbacks, ``message/send`` with an access token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...media import MediaKind, MediaSupport
from ...sections import RateLimitConfig
from ..spec import Capabilities, PlatformSpec, RateScope, SimMessage, SimRequest
from ..wecom.config import API_BASE, CAUSES, HINTS
from .config import WeComAppBot
from .handle import WeComAppHandle

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.routing import BaseRoute

    from ...callbacks import Adapter
    from ...delivery import Delivery, DeliveryContext


_FILE_LIMIT = 20 * 1024 * 1024


def _adapter(bot: WeComAppBot) -> Adapter:
    from .ingress import WeComAppAdapter

    return WeComAppAdapter.from_bot(bot)


def _delivery(bot: WeComAppBot, ctx: DeliveryContext) -> Delivery:
    from .delivery import WeComAppDelivery

    return WeComAppDelivery.from_bot(bot, ctx)


def _token_key(bot: WeComAppBot) -> str:
    from ...subjects import kv_key

    return kv_key("wecom", bot.credentials.corp_id, bot.credentials.agent_id)


def _sim_routes(state: Any, clock: Callable[[], float]) -> list[BaseRoute]:
    from .sim import routes

    return routes(state, clock)


def _sim_request(bot: WeComAppBot, m: SimMessage) -> SimRequest:
    from ..wecom.crypto import crypto_for
    from ..wecom.sim import app_media_xml, app_text_xml, encrypted_post

    c = bot.credentials
    if len(m.media) > 1:
        raise SystemExit("imrelay-sim: a WeCom app message carries one picture, voice, video or file")
    if m.media and m.text and m.media[0].kind != "voice":
        raise SystemExit("imrelay-sim: a WeCom app message carries text or media, not both")
    if m.media:  # a voice message's text is WeCom's recognition of it
        plain = app_media_xml(
            c.corp_id, c.agent_id, m.user, m.media[0], m.msg_id, int(m.now), m.sim_url, m.text
        )
    else:
        plain = app_text_xml(c.corp_id, c.agent_id, m.user, m.text, m.msg_id, int(m.now))
    cb = encrypted_post(crypto_for(c), plain, int(m.now), to_user=c.corp_id, agent_id=c.agent_id)
    return SimRequest(cb.query, {"Content-Type": "text/xml"}, cb.body)


def _sim_url_check(bot: WeComAppBot, echo: str, now: float) -> str:
    from ..wecom.sim import url_check

    return url_check(bot.credentials, echo, now)


SPEC = PlatformSpec[WeComAppBot](
    tags=("wecom_app",),
    title="WeCom self-built app",
    bot_model=WeComAppBot,
    reply_handle=WeComAppHandle,
    api_base={"wecom_app": API_BASE},
    capabilities=Capabilities(markdown=True, needs_token=True),
    rate_scopes=(
        RateScope(
            "wecom_app.per_user",
            RateLimitConfig(limit=30, window_seconds=60),
            "messages an app may send one member a minute",
        ),
    ),
    adapter=_adapter,
    delivery=_delivery,
    media=MediaSupport(
        inbound=frozenset({MediaKind.IMAGE, MediaKind.FILE, MediaKind.VOICE, MediaKind.VIDEO}),
        outbound=frozenset({MediaKind.IMAGE}),  # answers send images
        # an image message takes JPG/PNG up to 10 MB; a larger one (or another type) goes as a file, 20 MB
        limits={MediaKind.IMAGE: _FILE_LIMIT},
        note="voice arrives transcribed where speech recognition is on; "
        "answers' images above 10 MB (or not JPG/PNG) go as files",
    ),
    token_key=_token_key,
    sim_routes=_sim_routes,
    sim_request=_sim_request,
    sim_url_check=_sim_url_check,
    hints=HINTS,
    causes=CAUSES,
    demo="""\
  - id: demo
    platform: wecom_app
    backend: default
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}   # the simulator plays qyapi.weixin.qq.com
    credentials:
      corp_id: wwdemo0000000000001
      agent_id: "1000002"
      secret: ${DEMO_WECOM_SECRET:-demo-secret-not-for-production}
      token: ${DEMO_WECOM_TOKEN:-demotoken}
      encoding_aes_key: ${DEMO_WECOM_AES_KEY:-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG}
""",
)
