"""WeCom AI bot (智能机器人): encrypted JSON callbacks answered by a polled stream, or a long connection
(one owner per bot) with answers streamed over it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..spec import Capabilities, Ownership, PlatformSpec, SimMessage, SimRequest, SimSend
from ..wecom.config import API_BASE, HINTS
from .config import WeComAIBot
from .handle import WeComAIBotHandle
from .media import SUPPORT

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.routing import BaseRoute

    from ...callbacks import Adapter
    from ...connections import Connection, ConnectionContext
    from ...delivery import Delivery, DeliveryContext


def _adapter(bot: WeComAIBot) -> Adapter:
    from .ingress import WeComAIBotAdapter

    return WeComAIBotAdapter.from_bot(bot)


def _delivery(bot: WeComAIBot, ctx: DeliveryContext) -> Delivery:
    from .delivery import WeComAIBotDelivery

    return WeComAIBotDelivery.from_bot(bot, ctx)


def _connection(bot: WeComAIBot, ctx: ConnectionContext) -> Connection:
    from .connection import AIBotConnection

    return AIBotConnection(bot, ctx.cfg)


def _sim_routes(state: Any, clock: Callable[[], float]) -> list[BaseRoute]:
    from .sim_api import routes as response_url
    from .sim_gateway import routes as gateway

    return [*response_url(state, clock), *gateway(state, clock)]


def _sim_request(bot: WeComAIBot, m: SimMessage) -> SimRequest:
    from .sim import message_callback

    query, headers, body = message_callback(bot, m.text, m.user, m.msg_id, m.chat, m.now, m.sim_url, m.media)
    return SimRequest(query, headers, body)


def _sim_push(bot: WeComAIBot, send: SimSend) -> int:
    from .sim_cli import push_over_socket

    return push_over_socket(bot, send)


def _sim_answer(bot: WeComAIBot, send: SimSend, first: bytes) -> int:
    from .sim_cli import poll_answer

    return poll_answer(bot, send, first)


def _sim_url_check(bot: WeComAIBot, echo: str, now: float) -> str:
    from ..wecom.sim import url_check

    return url_check(bot.credentials, echo, now)


SPEC = PlatformSpec[WeComAIBot](
    tags=("wecom_aibot",),
    title="WeCom AI bot",
    bot_model=WeComAIBot,
    reply_handle=WeComAIBotHandle,
    api_base={"wecom_aibot": API_BASE},
    capabilities=Capabilities(long_connection=Ownership.SINGLE_OWNER, edits=True),
    adapter=_adapter,
    delivery=_delivery,
    connection=_connection,
    connection_events=("stream_keepalive",),
    sim_routes=_sim_routes,
    sim_request=_sim_request,
    sim_url_check=_sim_url_check,
    sim_push=_sim_push,
    sim_answer=_sim_answer,
    media=SUPPORT,
    hints=HINTS,
    demo="""\
  - id: demo-aibot
    platform: wecom_aibot
    credentials: {token: demoaibot, encoding_aes_key: aibotdemo0123456789abcdefghijklmnopqrstuvwx}
  - id: demo-aibot-ws
    platform: wecom_aibot
    mode: long_connection            # served by imrelay-connector over the simulator's WebSocket
    ws_url: ${IMRELAY_SIM_WS:-ws://127.0.0.1:8090}/ws/aibot
    credentials: {token: demoaibotws, encoding_aes_key: aibotdemo0123456789abcdefghijklmnopqrstuvwx,
                  bot_id: aibDemoLongConn, secret: demo-aibot-secret}
""",
)
