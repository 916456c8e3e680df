"""Feishu and Lark (飞书 / Lark Suite): signed, encrypted event callbacks or a long connection (every
replica holds its own: Feishu spreads an app's events over its connections); replies, cards streamed by
CardKit, a ``tenant_access_token``. One package for both: the same protocol on two domains."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...media import MediaKind, MediaSupport
from ...sections import RateLimitConfig
from ..spec import Capabilities, Ownership, PlatformSpec, RateScope, SimMessage, SimRequest, SimSend
from .config import FeishuBot
from .handle import FeishuHandle

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.routing import BaseRoute

    from ...callbacks import Adapter
    from ...connections import Connection, ConnectionContext
    from ...delivery import Delivery, DeliveryContext


def _adapter(bot: FeishuBot) -> Adapter:
    from .ingress import FeishuAdapter

    return FeishuAdapter.from_bot(bot)


def _delivery(bot: FeishuBot, ctx: DeliveryContext) -> Delivery:
    from .delivery import FeishuDelivery

    return FeishuDelivery.from_bot(bot, ctx)


def _connection(bot: FeishuBot, ctx: ConnectionContext) -> Connection:
    from .. import api_base
    from .connection import FeishuConnection, redial_for

    return FeishuConnection(bot, ctx.cfg, api_base(bot), redial_for(bot.id))


def _token_key(bot: FeishuBot) -> str:
    from ...subjects import kv_key

    return kv_key(bot.platform, bot.credentials.app_id)


def _sim_routes(state: Any, clock: Callable[[], float]) -> list[BaseRoute]:
    from .sim import routes
    from .sim_gateway import routes as gateway

    return [*routes(state, clock), *gateway(state, clock)]


def _sim_push(bot: FeishuBot, send: SimSend) -> int:
    from .sim_cli import push_over_socket

    return push_over_socket(bot, send)


def _sim_request(bot: FeishuBot, m: SimMessage) -> SimRequest:
    from .sim import callback

    headers, body = callback(
        bot,
        m.text,
        m.user,
        m.chat or f"oc_p2p_{m.user}",
        "group" if m.chat else "p2p",
        f"ev{m.msg_id}",
        f"om_{m.msg_id}",
        m.now,
        m.media,
    )
    return SimRequest("", headers, body)


_MB = 1024 * 1024
_MEDIA = MediaSupport(
    inbound=frozenset({MediaKind.IMAGE, MediaKind.FILE, MediaKind.VOICE, MediaKind.VIDEO}),
    outbound=frozenset({MediaKind.IMAGE, MediaKind.FILE}),
    limits={MediaKind.IMAGE: 10 * _MB, MediaKind.FILE: 30 * _MB},
    inbound_limits={kind: 100 * _MB for kind in MediaKind},
    note="pictures of a streamed answer appear inside its card; scope im:resource",
)

_HINTS = {
    "99991663": "feishu-99991663",
    "99991661": "feishu-99991663",
    "10014": "feishu-10014",
    "10003": "feishu-10014",
}

SPEC = PlatformSpec[FeishuBot](
    tags=("feishu", "lark"),
    title="Feishu / Lark",
    bot_model=FeishuBot,
    reply_handle=FeishuHandle,
    api_base={"feishu": "https://open.feishu.cn", "lark": "https://open.larksuite.com"},
    capabilities=Capabilities(
        long_connection=Ownership.ACTIVE_ACTIVE, edits=True, markdown=True, needs_token=True
    ),
    rate_scopes=(
        RateScope(
            "feishu.per_app",
            RateLimitConfig(limit=50, window_seconds=1),
            "messages one app may send a second",
        ),
        RateScope(
            "feishu.per_chat", RateLimitConfig(limit=5, window_seconds=1), "messages one chat takes a second"
        ),
    ),
    adapter=_adapter,
    delivery=_delivery,
    connection=_connection,
    connection_events=("stale", "duplicate", "not_stored"),
    token_key=_token_key,
    media=_MEDIA,
    sim_routes=_sim_routes,
    sim_request=_sim_request,
    sim_push=_sim_push,
    hints=_HINTS,
    causes={
        "10014": "wrong app secret (credentials.app_secret)",
        "10003": "wrong app id (credentials.app_id)",
    },
    demo="""\
  - id: demo-feishu
    platform: feishu
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {app_id: cli_demo0001, app_secret: demo-secret, encrypt_key: demo-encrypt-key,
                  verification_token: demo-verification-token}
  - id: demo-lark
    platform: lark
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {app_id: cli_demo0002, app_secret: demo-secret, encrypt_key: demo-lark-encrypt-key,
                  verification_token: demo-lark-token}
  - id: demo-feishu-ws
    platform: feishu
    mode: long_connection            # served by imrelay-connector over the simulator's WebSocket
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {app_id: cli_demo0003, app_secret: demo-ws-secret}
""",
)
