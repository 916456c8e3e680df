"""``imrelay``: the operator's command line.

imrelay dev            run everything on this machine: embedded nats-server, ingress, llm-worker,
                       sender and the platform simulator (Ctrl-C stops it all)
imrelay check-config   validate the config file and print a summary (secrets masked); --online also
                       reaches NATS, fetches each bot's access token and calls each backend once
imrelay status         streams, consumer lag, each bot's token expiry and connector lease, dead letters
imrelay dlq list       list dead letters (imrelay.dlq.*) with the reason and the platform's code
imrelay dlq show N     every header and the body of dead letter N
imrelay dlq redrive N  send dead letter N back to where it failed (--all for every one)
imrelay config schema     the JSON Schema of the config file (for editors); --chart PATH regenerates
                          the bot schema embedded in the Helm chart's values.schema.json
imrelay config reference  every config key with its default and meaning (Markdown)
imrelay config media      what each platform can receive and send as media, with its limits (Markdown)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from . import __version__
from .config import Settings, load_settings, parse_settings
from .devconfig import DEV_CONFIG
from .errors import CheckFailed, ConfigError
from .natsserver import EmbeddedNats


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"nats: {settings.nats.url}")
    for name, b in settings.backends.items():
        print(f"backend {name}: {b.kind.value}" + (f" {b.base_url} model={b.model}" if b.base_url else ""))
    for bot in settings.bots:
        print(f"bot {bot.id}: {bot.platform} -> backend {bot.backend}, callback path /callback/{bot.id}")
    if not args.online:
        print("ok")
        return 0
    import asyncio

    from .ops import Check, run_checks

    print("\nonline checks:")

    async def run() -> list[Check]:
        async with httpx.AsyncClient(timeout=settings.sender.http_timeout_seconds) as client:
            return await run_checks(online_checks(settings, client))

    results = asyncio.run(run())
    for r in results:
        print(r.line(), flush=True)
    failed = sum(not r.ok for r in results)
    print(f"{failed} check(s) failed" if failed else "ok: ready to go live")
    return 1 if failed else 0


def online_checks(
    settings: Settings, client: httpx.AsyncClient
) -> list[tuple[str, Callable[[], Awaitable[str]]]]:
    """NATS reachable with JetStream; each bot's access token fetched through the sender's own token code
    (proving the secret and, where the platform checks it, that this host's IP is trusted); each backend
    answering once."""
    from typing import Any, cast

    from .jetstream import connect, streams_present
    from .ops import explain_exception

    async def check_nats() -> str:
        nc = await connect(settings.nats, "imrelay-cli", max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            await js.account_info()
            where = nc.connected_url.netloc if nc.connected_url else "?"
            present = await streams_present(js)
            return f"connected to {where}, JetStream enabled, streams " + (
                "present" if present else "not created yet (the services create them at start)"
            )
        finally:
            await nc.close()

    checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [("nats", check_nats)]
    try:
        from imrelay.delivery import DeliveryContext
        from imrelay.platforms import delivery_for, spec_for
    except ImportError:

        async def no_sender() -> str:
            raise CheckFailed("imrelay-sender is not installed here: tokens cannot be checked")

        checks.append(("tokens", no_sender))
    else:
        ctx = DeliveryContext(settings=settings, client=client, tokens=cast(Any, None))
        for bot in settings.bots:
            needs_token = spec_for(bot).capabilities.needs_token
            fetch = getattr(delivery_for(bot, ctx), "_fetch_token", None) if needs_token else None

            async def check_token(
                fetch: Any = fetch, platform: str = bot.platform, api: str = settings.auth_base(bot)
            ) -> str:
                if fetch is None:
                    return "no access token needed (webhook or reply token)"
                try:
                    _, expires_in = await fetch()
                except Exception as exc:
                    if getattr(exc, "code", None) == "token":  # the endpoint could not be reached
                        raise CheckFailed(f"cannot reach {api}: {getattr(exc, 'message', exc)}") from exc
                    raise CheckFailed(explain_exception(platform, exc)) from exc
                return f"access token fetched (valid {int(expires_in)}s): credentials and this host accepted"

            checks.append((f"bot {bot.id} ({bot.platform}) token", check_token))
    try:
        from imrelay_worker.backends import ChatMessage, ChatRequest, Replace, build_backend
    except ImportError:

        async def no_worker() -> str:
            raise CheckFailed("imrelay-worker is not installed here: backends cannot be checked")

        checks.append(("backends", no_worker))
    else:
        for name, cfg in settings.backends.items():

            async def check_backend(name: str = name, cfg: Any = cfg) -> str:
                backend = build_backend(name, cfg, client)
                request = ChatRequest(
                    messages=[ChatMessage("user", "Reply with the word: ok")],
                    user="imrelay-check-config",
                    conversation="imrelay-check-config",
                )
                started = time.monotonic()
                first: float | None = None
                chars = 0
                async for piece in backend.stream(request):
                    if first is None:
                        first = time.monotonic() - started
                    chars += len(piece.text if isinstance(piece, Replace) else piece)
                if not chars:
                    raise CheckFailed("the backend answered with no text")
                return (
                    f"{cfg.kind.value} answered ({chars} characters, first words after "
                    f"{first or 0:.2f}s, whole answer {time.monotonic() - started:.2f}s)"
                )

            checks.append((f"backend {name}", check_backend))

    return checks


def cmd_dlq(args: argparse.Namespace) -> int:
    import asyncio

    from .dlq import format_table, get_dead_letter, list_dead_letters, redrive
    from .jetstream import connect
    from .ops import format_dead_letter

    try:
        cfg = (
            parse_settings({"nats": {"url": args.nats_url}}, os.environ)
            if args.nats_url
            else load_settings(args.config)
        ).nats
    except ConfigError as exc:
        print(f"configuration error: {exc} (or pass --nats-url)", file=sys.stderr)
        return 2

    async def run() -> int:
        try:
            nc = await connect(cfg, "imrelay-cli", max_reconnect_attempts=1)
        except ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        try:
            js = nc.jetstream()
            if args.action == "show":
                if len(args.seq) != 1:
                    print("name one dead letter to show: imrelay dlq show SEQ", file=sys.stderr)
                    return 2
                letter = await get_dead_letter(js, args.seq[0])
                if letter is None:
                    print(f"no dead letter {args.seq[0]}", file=sys.stderr)
                    return 1
                print(format_dead_letter(letter))
                return 0
            if args.action == "list":
                letters = await list_dead_letters(js, args.stage, args.limit)
                print(format_table(letters) if letters else "no dead letters")
                return 0
            seqs = list(args.seq)
            if args.all:
                seqs += [d.seq for d in await list_dead_letters(js, args.stage, 100_000)]
            if not seqs:
                print("name the dead letters to re-drive (SEQ ...) or --all", file=sys.stderr)
                return 2
            failed = 0
            for seq in seqs:
                try:
                    subject = await redrive(js, seq)
                    print(f"re-drove {seq} to {subject}")
                except Exception as exc:
                    failed += 1
                    print(f"could not re-drive {seq}: {exc}", file=sys.stderr)
            return 1 if failed else 0
        finally:
            await nc.close()

    return asyncio.run(run())


def _servers(args: argparse.Namespace) -> tuple[Settings | None, int]:
    try:
        if args.nats_url:
            base = load_settings(args.config) if args.config else parse_settings({}, {})
            return base.model_copy(
                update={"nats": parse_settings({"nats": {"url": args.nats_url}}, os.environ).nats}
            ), 0
        return load_settings(args.config), 0
    except ConfigError as exc:
        print(f"configuration error: {exc} (or pass --nats-url)", file=sys.stderr)
        return None, 2


def cmd_status(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from .jetstream import connect
    from .ops import collect_status, format_status

    settings, code = _servers(args)
    if settings is None:
        return code

    async def run() -> int:
        try:
            nc = await connect(settings.nats, "imrelay-cli", max_reconnect_attempts=1)
        except ConfigError as exc:  # credentials or TLS refused
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            print(
                f"cannot reach NATS at {', '.join(settings.nats.servers)}: {type(exc).__name__} "
                "(see docs/troubleshooting.md#nats-unreachable)",
                file=sys.stderr,
            )
            return 1
        try:
            status = await collect_status(nc.jetstream(), settings)
        finally:
            await nc.close()
        print(json.dumps(status, indent=2) if args.output == "json" else format_status(status))
        return 0

    return asyncio.run(run())


def cmd_config(args: argparse.Namespace) -> int:
    import json

    from .configdoc import config_reference, config_schema, media_table, with_chart_bots_schema

    if args.action == "schema" and args.chart:
        with open(args.chart, encoding="utf-8") as f:
            values_schema = json.load(f)
        with open(args.chart, "w", encoding="utf-8") as f:
            f.write(json.dumps(with_chart_bots_schema(values_schema), indent=2, ensure_ascii=False) + "\n")
    elif args.action == "schema":
        print(json.dumps(config_schema(), indent=2, ensure_ascii=False))
    elif args.chart:
        raise SystemExit("imrelay: --chart goes with `config schema`")
    elif args.action == "media":
        print(media_table(), end="")
    else:
        print(config_reference(), end="")
    return 0


SERVICES = [
    ("sim", ["imrelay_sim", "serve", "--port", "{sim_port}"], None),
    ("ingress", ["imrelay_ingress"], 0),
    ("worker", ["imrelay_worker"], 1),
    ("sender", ["imrelay_sender"], 2),
    ("connector", ["imrelay_ingress.connector"], 3),  # only with long-connection bots
]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def cmd_dev(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    config = args.config or os.environ.get("IMRELAY_CONFIG")
    if not config:
        config = str(state / "dev.yaml")
        if not Path(config).exists():
            Path(config).write_text(DEV_CONFIG, encoding="utf-8")
    os.environ.setdefault("IMRELAY_SIM_URL", f"http://127.0.0.1:{args.sim_port}")
    os.environ.setdefault("IMRELAY_SIM_WS", f"ws://127.0.0.1:{args.sim_port}")
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    nats_server = EmbeddedNats(store_dir=state / "nats", port=args.nats_port).start()
    env = dict(
        os.environ,
        IMRELAY_CONFIG=str(Path(config).resolve()),
        IMRELAY_NATS_URL=nats_server.url,
        IMRELAY_PORT=str(args.port),
        IMRELAY_SIM_URL=f"http://127.0.0.1:{args.sim_port}",
        IMRELAY_SIM_WS=f"ws://127.0.0.1:{args.sim_port}",
    )
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    try:
        print(f"nats-server (JetStream) on {nats_server.url}, data in {state / 'nats'}", flush=True)
        long_connection = any(getattr(b, "mode", "") == "long_connection" for b in settings.bots)
        for name, argv, admin_offset in SERVICES:
            if name == "connector" and not long_connection:
                continue
            penv = dict(env)
            if admin_offset is not None:
                penv["IMRELAY_ADMIN_PORT"] = str(args.admin_port + admin_offset)
            cmd = [sys.executable, "-m", *[a.format(sim_port=args.sim_port) for a in argv]]
            proc = subprocess.Popen(  # noqa: S603 - our own modules
                cmd,
                env=penv,
                start_new_session=True,
            )
            procs.append((name, proc))
            probe = (
                f"http://127.0.0.1:{args.admin_port + admin_offset}/readyz"
                if admin_offset is not None
                else f"http://127.0.0.1:{args.sim_port}/sim/stats"
            )
            if not _wait_ready(probe, proc, 30.0):
                print(f"{name} did not become ready; stopping", file=sys.stderr)
                return 1
            print(f"{name} ready", flush=True)
        bots = ", ".join(b.id for b in settings.bots) or "none"
        first = settings.bots[0].id if settings.bots else "BOT"
        print(
            "\nimrelay is running.\n"
            f"  callbacks:  http://127.0.0.1:{args.port}/callback/<bot id>   (bots: {bots})\n"
            f"  metrics:    http://127.0.0.1:{args.admin_port}/metrics (ingress), "
            f":{args.admin_port + 1} (worker), :{args.admin_port + 2} (sender)"
            + (f", :{args.admin_port + 3} (connector)" if long_connection else "")
            + "\n"
            f"  simulator:  http://127.0.0.1:{args.sim_port}/sim/messages\n\n"
            "Send a message as the platform would, and see the answer:\n"
            f"  make demo      (or: uv run imrelay-sim --config {config} send --bot {first} "
            '--text "hello" --wait 10)\n'
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        while not stopping:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    code = 1
                    stopping = True
            time.sleep(0.2)
    finally:
        for _, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in time; killing it", file=sys.stderr)
                proc.kill()
        nats_server.stop()
        print("stopped.", flush=True)
    return code


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="imrelay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"imrelay {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dev", help="run the whole stack on this machine")
    d.add_argument("--config", help="config file (default: a generated demo config)")
    d.add_argument("--state-dir", default=".imrelay", help="where NATS data and the demo config live")
    d.add_argument("--port", type=int, default=8080, help="ingress public port")
    d.add_argument("--admin-port", type=int, default=9464, help="first of the admin ports (3 or 4)")
    d.add_argument("--sim-port", type=int, default=8090)
    d.add_argument("--nats-port", type=int, default=4222)
    c = sub.add_parser("check-config", help="validate the config file")
    c.add_argument("--config", help="default: $IMRELAY_CONFIG or ./imrelay.yaml")
    c.add_argument(
        "--online",
        action="store_true",
        help="also reach NATS, fetch each bot's access token, and call each backend once",
    )
    st = sub.add_parser("status", help="streams, consumer lag, tokens, connector leases, dead letters")
    st.add_argument("--config", help="default: $IMRELAY_CONFIG or ./imrelay.yaml")
    st.add_argument("--nats-url", help="NATS server URL, or several comma-separated (overrides the config)")
    st.add_argument("--output", choices=["text", "json"], default="text")
    g = sub.add_parser("config", help="the config file's JSON Schema, or its reference in Markdown")
    g.add_argument("action", choices=["schema", "reference", "media"])
    g.add_argument(
        "--chart",
        metavar="PATH",
        help="schema: regenerate the bot schema embedded in this Helm chart values.schema.json (in place)",
    )
    q = sub.add_parser("dlq", help="list, show or re-drive dead letters")
    q.add_argument("action", choices=["list", "show", "redrive"])
    q.add_argument("seq", nargs="*", type=int, help="dead-letter sequence numbers (show, redrive)")
    q.add_argument("--all", action="store_true", help="redrive every dead letter (of --stage)")
    q.add_argument("--stage", choices=["worker", "sender"], help="only this stage's dead letters")
    q.add_argument("--limit", type=int, default=100, help="list at most this many, newest")
    q.add_argument("--config", help="config file for nats.url (default: $IMRELAY_CONFIG)")
    q.add_argument("--nats-url", help="NATS server URL, or several comma-separated (overrides the config)")
    from . import natsadmin

    natsadmin.add_parser(sub)
    handlers = {"dev": cmd_dev, "check-config": cmd_check_config, "dlq": cmd_dlq, "nats": natsadmin.run}
    try:  # erasing memory needs the worker's package (installed beside this one in the image)
        from imrelay_worker import forget
    except ImportError:
        pass
    else:
        forget.add_parser(sub)
        handlers["forget"] = forget.run
    args = p.parse_args(argv)
    handlers.update(status=cmd_status, config=cmd_config)
    handler = handlers[args.cmd]
    try:
        code = handler(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`imrelay config schema | head`): stop quietly, as other commands do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
