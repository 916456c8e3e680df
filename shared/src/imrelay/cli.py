"""``imrelay``: the operator's command line.

    imrelay dev            run everything on this machine: embedded nats-server, ingress, llm-worker,
                           sender and the platform simulator (Ctrl-C stops it all)
    imrelay check-config   validate the config file and print a summary (secrets masked)
    imrelay dlq list       list dead letters (imrelay.dlq.*) with the reason and the platform's code
    imrelay dlq redrive N  send dead letter N back to where it failed (--all for every one)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .config import load_settings, parse_settings
from .devconfig import DEV_CONFIG
from .errors import ConfigError
from .natsserver import EmbeddedNats


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"nats: {settings.nats.url}")
    for name, b in settings.backends.items():
        print(f"backend {name}: {b.kind.value}" + (f" {b.base_url} model={b.model}" if b.base_url
                                                    else ""))
    for bot in settings.bots:
        print(f"bot {bot.id}: {bot.platform.value} -> backend {bot.backend}, "
              f"callback path /callback/{bot.id}")
    print("ok")
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    import asyncio

    from .dlq import format_table, list_dead_letters, redrive
    from .jetstream import connect

    try:
        cfg = (parse_settings({"nats": {"url": args.nats_url}}, os.environ) if args.nats_url
               else load_settings(args.config)).nats
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
    os.environ.setdefault("IMRELAY_SIM_WS_URL", f"ws://127.0.0.1:{args.sim_port}/ws/aibot")
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    nats_server = EmbeddedNats(store_dir=state / "nats", port=args.nats_port).start()
    env = dict(os.environ, IMRELAY_CONFIG=str(Path(config).resolve()),
               IMRELAY_NATS_URL=nats_server.url, IMRELAY_PORT=str(args.port),
               IMRELAY_SIM_URL=f"http://127.0.0.1:{args.sim_port}",
               IMRELAY_SIM_WS_URL=f"ws://127.0.0.1:{args.sim_port}/ws/aibot")
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
            proc = subprocess.Popen(cmd, env=penv,  # noqa: S603 - our own modules
                                    start_new_session=True)
            procs.append((name, proc))
            probe = (f"http://127.0.0.1:{args.admin_port + admin_offset}/readyz"
                     if admin_offset is not None else f"http://127.0.0.1:{args.sim_port}/sim/stats")
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
            + (f", :{args.admin_port + 3} (connector)" if long_connection else "") + "\n"
            f"  simulator:  http://127.0.0.1:{args.sim_port}/sim/messages\n\n"
            "Send a message as the platform would, and see the answer:\n"
            f"  make demo      (or: uv run imrelay-sim --config {config} send --bot {first} "
            '--text "hello" --wait 10)\n'
            "Press Ctrl-C to stop.\n", flush=True)
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
    p = argparse.ArgumentParser(prog="imrelay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    q = sub.add_parser("dlq", help="list or re-drive dead letters")
    q.add_argument("action", choices=["list", "redrive"])
    q.add_argument("seq", nargs="*", type=int, help="dead-letter sequence numbers (redrive)")
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
    handler = handlers[args.cmd]
    raise SystemExit(handler(args))


if __name__ == "__main__":
    main()
