"""``imrelay nats ...``: setting up imrelay's NATS as its administrator.

* ``setup`` creates or updates every stream and KV bucket (services with least-privilege users may only
  create what is missing).
* ``server-config`` prints the nats-server ``authorization`` block, one user per service, passwords from
  ``IMRELAY_NATS_PASSWORD_<SERVICE>`` (``..._INGRESS``, ``..._WORKER`` ...).
* ``permissions`` prints each service's permissions (``--markdown``: ``docs/nats-permissions.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping

from . import subjects as s
from .config import Settings, load_settings
from .errors import ConfigError
from .permissions import SERVICES, authorization_block, chart_template, markdown, password_variable

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    n = sub.add_parser("nats", help="set up NATS: streams and buckets, users and permissions")
    n.add_argument("action", choices=["setup", "server-config", "permissions"])
    n.add_argument("--config", help="config file (setup; default: $IMRELAY_CONFIG)")
    n.add_argument("--markdown", action="store_true", help="permissions as the docs page")
    n.add_argument("--chart", action="store_true", help="permissions as the Helm chart's template")


async def setup(settings: Settings) -> list[str]:
    """Create or update every stream and bucket; return their names."""
    from .jetstream import (
        connect,
        ensure_buckets,
        ensure_leases_bucket,
        ensure_memory_bucket,
        ensure_replay_bucket,
        ensure_streams,
        ensure_streams_bucket,
        stream_configs,
    )

    cfg = settings.nats
    nc = await connect(cfg, "imrelay-cli", max_reconnect_attempts=1)
    try:
        js = nc.jetstream(timeout=cfg.publish_timeout_seconds)
        await ensure_streams(js, cfg)
        await ensure_buckets(js, cfg)
        await ensure_memory_bucket(js, cfg, settings.memory.ttl_seconds)
        await ensure_streams_bucket(js, cfg)
        await ensure_leases_bucket(js, cfg)
        await ensure_replay_bucket(js, cfg)
        buckets = [
            s.KV_TOKENS,
            s.KV_DELIVERIES,
            s.KV_RATELIMITS,
            s.KV_MEMORY,
            s.KV_STREAMS,
            s.KV_LEASES,
            s.KV_REPLAY,
        ]
        return [c.name or "" for c in stream_configs(cfg)] + buckets
    finally:
        await nc.close()


def server_config(environ: Mapping[str, str]) -> str:
    passwords = {
        svc: environ[password_variable(svc)] for svc in SERVICES if environ.get(password_variable(svc))
    }
    if not passwords:
        raise ConfigError(
            "",
            "set IMRELAY_NATS_PASSWORD_<SERVICE> for the services to authorize "
            f"({', '.join(s.upper() for s in SERVICES)})",
        )
    return authorization_block(passwords)


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "permissions":
            if args.markdown:
                print(markdown(), end="")
            elif args.chart:
                print(chart_template(), end="")
            else:
                print(authorization_block({svc: "<password>" for svc in SERVICES}), end="")
            return 0
        if args.action == "server-config":
            print(server_config(os.environ), end="")
            return 0
        names = asyncio.run(setup(load_settings(args.config)))
        print("ready: " + ", ".join(names))
        return 0
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
