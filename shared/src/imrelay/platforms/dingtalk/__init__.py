"""DingTalk (钉钉) robots: signed HTTP callbacks, or Stream mode (a long connection each connector replica
holds, no public URL), answered through the message's session webhook, or the robot API with an access
token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...media import MediaKind, MediaSupport
from ...sections import RateLimitConfig
from ..spec import Capabilities, Ownership, PlatformSpec, RateScope, SimMessage, SimRequest, SimSend
from .config import DingTalkBot
from .handle import DingTalkHandle

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.routing import BaseRoute

    from ...callbacks import Adapter
    from ...connections import Connection, ConnectionContext
    from ...delivery import Delivery, DeliveryContext


_MB = 1024 * 1024


def _adapter(bot: DingTalkBot) -> Adapter:
    from .ingress import DingTalkAdapter

    return DingTalkAdapter.from_bot(bot)


def _delivery(bot: DingTalkBot, ctx: DeliveryContext) -> Delivery:
    from .delivery import DingTalkDelivery

    return DingTalkDelivery.from_bot(bot, ctx)


def _connection(bot: DingTalkBot, ctx: ConnectionContext) -> Connection:
    from .. import api_base
    from .connection import StreamConnection

    return StreamConnection(bot, ctx.cfg, api_base=api_base(bot))


def _token_key(bot: DingTalkBot) -> str:
    from ...subjects import kv_key

    return kv_key("dingtalk", bot.credentials.app_key)


def _sim_routes(state: Any, clock: Callable[[], float]) -> list[BaseRoute]:
    from .sim import routes
    from .sim_stream import routes as stream

    return [*routes(state, clock), *stream(state, clock)]


def _sim_request(bot: DingTalkBot, m: SimMessage) -> SimRequest:
    from .sim import callback

    try:
        headers, body = callback(
            bot,
            m.text,
            m.user,
            m.chat or f"cid_{m.user}",
            bool(m.chat),
            f"msg{m.msg_id}",
            m.now,
            m.sim_url,
            media=m.media,
        )
    except ValueError as exc:  # media DingTalk does not send that way (voice, files, video in a group)
        raise SystemExit(f"imrelay-sim: {exc}") from None
    return SimRequest("", headers, body)


def _sim_push(bot: DingTalkBot, send: SimSend) -> int:
    from .sim_cli import push_over_stream

    return push_over_stream(bot, send)


SPEC = PlatformSpec[DingTalkBot](
    tags=("dingtalk",),
    title="DingTalk",
    bot_model=DingTalkBot,
    reply_handle=DingTalkHandle,
    api_base={"dingtalk": "https://api.dingtalk.com"},
    auth_base="https://oapi.dingtalk.com",  # the legacy API: media uploads, with its own token
    capabilities=Capabilities(long_connection=Ownership.ACTIVE_ACTIVE, needs_token=True),
    rate_scopes=(
        RateScope(
            "dingtalk.per_robot",
            RateLimitConfig(limit=20, window_seconds=60),
            "messages one robot may send a minute",
        ),
    ),
    adapter=_adapter,
    delivery=_delivery,
    connection=_connection,
    media=MediaSupport(
        inbound=frozenset({MediaKind.IMAGE, MediaKind.FILE, MediaKind.VOICE, MediaKind.VIDEO}),
        outbound=frozenset({MediaKind.IMAGE}),
        limits={MediaKind.IMAGE: 20 * _MB},  # media/upload's image limit (answers send images only)
        note="voice arrives transcribed; in groups only pictures (files, voice, video one-to-one)",
    ),
    connection_events=("disconnect", "idle", "not_stored"),
    token_key=_token_key,
    sim_routes=_sim_routes,
    sim_request=_sim_request,
    sim_push=_sim_push,
    demo="""\
  - id: demo-dingtalk
    platform: dingtalk
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {app_key: dingdemo0001, app_secret: demo-dingtalk-secret}
  - id: demo-dingtalk-stream
    platform: dingtalk
    mode: long_connection            # Stream mode: served by imrelay-connector, no public URL
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {app_key: dingdemostream01, app_secret: demo-dingtalk-stream-secret}
""",
)
