"""``imrelay forget --bot B --user U``: erase what imrelay remembers of one user of one bot (their
conversation memory), run with the NATS administrator's credentials."""

from __future__ import annotations

import argparse
import asyncio
import sys

from imrelay.config import Settings, load_settings
from imrelay.errors import ConfigError
from imrelay.jetstream import connect, ensure_memory_bucket

from .memory import MemoryStore

__all__ = ["add_parser", "forget", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    f = sub.add_parser("forget", help="erase a user's conversation memory with a bot")
    f.add_argument("--bot", required=True, help="bot id")
    f.add_argument("--user", required=True, help="the user's id on the platform (as in the bot's messages)")
    f.add_argument("--config", help="config file (default: $IMRELAY_CONFIG)")


async def forget(settings: Settings, bot_id: str, user: str) -> int:
    bot = settings.bot(bot_id)
    if bot is None:
        raise ConfigError("bots", f"no bot {bot_id!r} in the configuration")
    nc = await connect(settings.nats, "imrelay-cli", max_reconnect_attempts=1)
    try:
        js = nc.jetstream(timeout=settings.nats.publish_timeout_seconds)
        kv = await ensure_memory_bucket(js, settings.nats, settings.memory.ttl_seconds)
        return await MemoryStore(kv, settings.memory).forget_user(bot.platform, bot.id, user)
    finally:
        await nc.close()


def run(args: argparse.Namespace) -> int:
    try:
        changed = asyncio.run(forget(load_settings(args.config), args.bot, args.user))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"forgot {args.user} on {args.bot}: {changed} conversation record(s) erased or trimmed")
    return 0
