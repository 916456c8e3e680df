"""Discord: Ed25519-signed interactions (``/ask``), answered by editing the deferred response; and, with
``mode: long_connection``, the Gateway (mentions of the bot and DMs, no public URL needed; one owner per
bot), answered by a reply edited while it grows. Discord announces its own rate limits per route. A
long-connection bot keeps its interactions URL: ``/ask`` works as well when it is configured."""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

from ...media import MediaKind, MediaSupport
from ..spec import Capabilities, Ownership, PlatformSpec, SimMessage, SimRequest, SimSend
from .config import DiscordBot
from .handle import DiscordHandle

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.routing import BaseRoute

    from ...callbacks import Adapter
    from ...connections import Connection, ConnectionContext
    from ...delivery import Delivery, DeliveryContext


def _adapter(bot: DiscordBot) -> Adapter:
    from .ingress import DiscordAdapter

    return DiscordAdapter.from_bot(bot)


def _delivery(bot: DiscordBot, ctx: DeliveryContext) -> Delivery:
    from .delivery import DiscordDelivery

    return DiscordDelivery.from_bot(bot, ctx)


def _connection(bot: DiscordBot, ctx: ConnectionContext) -> Connection:
    from .. import api_base
    from .connection import GatewayConnection, session_for

    return GatewayConnection(bot, ctx.cfg, api_base(bot), session_for(bot.id))


def _sim_routes(state: Any, clock: Callable[[], float]) -> list[BaseRoute]:
    from .sim import routes
    from .sim_gateway import routes as gateway

    return [*routes(state, clock), *gateway(state, clock)]


def _sim_push(bot: DiscordBot, send: SimSend) -> int:
    from .sim_cli import push_over_gateway

    return push_over_gateway(bot, send)


_MB = 1024 * 1024


def _sim_request(bot: DiscordBot, m: SimMessage) -> SimRequest:
    from .sim import DEMO_SEED, callback, public_key_for

    seed = os.environ.get("DISCORD_SIM_SEED") or DEMO_SEED
    if public_key_for(seed) != bot.credentials.public_key:
        raise SystemExit("imrelay-sim: set DISCORD_SIM_SEED to the hex seed of this bot's public key")
    token = "aW50ZXJhY3Rpb24" + hashlib.sha256(m.msg_id.encode()).hexdigest()[:40]
    headers, body = callback(
        bot,
        m.text,
        m.user,
        m.chat or f"dm-{m.user}",
        m.msg_id,
        token,
        m.now,
        seed,
        media=m.media,
        sim_url=m.sim_url,
    )
    return SimRequest("", headers, body)


SPEC = PlatformSpec[DiscordBot](
    tags=("discord",),
    title="Discord",
    bot_model=DiscordBot,
    reply_handle=DiscordHandle,
    api_base={"discord": "https://discord.com"},
    capabilities=Capabilities(long_connection=Ownership.SINGLE_OWNER, edits=True),
    adapter=_adapter,
    delivery=_delivery,
    connection=_connection,
    connection_events=("message", "replayed_duplicate"),
    media=MediaSupport(
        inbound=frozenset({MediaKind.IMAGE, MediaKind.FILE, MediaKind.VOICE, MediaKind.VIDEO}),
        outbound=frozenset({MediaKind.IMAGE}),
        # per file unless the interaction's attachment_size_limit says otherwise (answers send images only)
        limits={MediaKind.IMAGE: 20 * _MB},
        note="/ask takes files through attachment options; mentions and DMs over the Gateway",
    ),
    sim_routes=_sim_routes,
    sim_request=_sim_request,
    sim_push=_sim_push,
    demo="""\
  - id: demo-discord
    platform: discord
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {application_id: "100000000000000001", bot_token: demo-bot-token,
                  public_key: 7b5e10d4ba33abe2ff7dec86cf4de3c0a9175860412afa49313167450d3008c5}
  - id: demo-discord-gw
    platform: discord
    mode: long_connection            # mentions and DMs over the simulator's Gateway (imrelay-connector)
    api_base: ${IMRELAY_SIM_URL:-http://127.0.0.1:8090}
    credentials: {application_id: "100000000000000002", bot_token: demo-gateway-bot-token,
                  public_key: 7b5e10d4ba33abe2ff7dec86cf4de3c0a9175860412afa49313167450d3008c5}
""",
)
