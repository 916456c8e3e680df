"""``imrelay-sim``: run the platform simulator, or act as a platform towards the ingress.

imrelay-sim serve [--port 8090]                    play the platform APIs
imrelay-sim send --bot ID --text "hello" [--wait 20]   send a signed, encrypted callback
imrelay-sim send --bot ID --image photo.png [--file report.pdf]   a picture or a file (the simulator
                                                   serves the bytes; the answer names their sha256)
imrelay-sim verify-url --bot ID                    perform the console's URL verification
imrelay-sim messages [--bot ID]                    list what the bots delivered
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

import httpx

from imrelay import __version__
from imrelay.config import BotConfig, Settings, load_settings
from imrelay.errors import ConfigError
from imrelay.platforms import spec_for
from imrelay.platforms.spec import SimMedia, SimMessage, SimSend

from .client import DEFAULT_INGRESS, DEFAULT_SIM, build_request, post_with_retries, upload_media


def _settings(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        raise SystemExit(f"imrelay-sim: configuration error: {exc}") from None


def _bot(settings: Settings, bot_id: str) -> BotConfig:
    bot = settings.bot(bot_id)
    if bot is None:
        known = ", ".join(b.id for b in settings.bots) or "none"
        raise SystemExit(f"imrelay-sim: no bot {bot_id!r} in the config (bots: {known})")
    return bot


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .server import create_app

    settings = (
        _settings(args.config)
        if args.config or os.environ.get("IMRELAY_CONFIG") or os.path.exists("imrelay.yaml")
        else None
    )
    app = create_app(settings, token_lifetime=args.token_lifetime, user_limit=args.user_limit)
    print(
        f"imrelay-sim: playing the platform APIs on http://{args.host}:{args.port} "
        f"(tokens live {args.token_lifetime:g}s)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def cmd_send(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    bot = _bot(settings, args.bot)
    msg_id = args.msg_id or str(secrets.randbelow(2**63))
    spec = spec_for(bot)
    media = _media(args)
    send = SimSend(
        SimMessage(
            text=args.text,
            user=args.user,
            msg_id=msg_id,
            now=time.time(),
            sim_url=args.sim,
            chat=args.chat,
            media=media,
        ),
        ingress=args.ingress,
        wait=args.wait,
    )
    if bot.mode == "long_connection":
        if spec.sim_push is None:
            raise SystemExit(f"imrelay-sim: {bot.platform} long connections cannot be simulated yet")
        return spec.sim_push(bot, send)
    query, headers, body = build_request(
        bot, args.text, args.user, msg_id, send.message.now, args.sim, args.chat, media
    )
    url = f"{args.ingress}/callback/{bot.id}" + (f"?{query}" if query else "")
    with httpx.Client(timeout=10) as client:
        before = 0
        if args.wait:
            before = len(client.get(f"{args.sim}/sim/messages", params={"bot": bot.id}).json())
        resp = post_with_retries(client, url, body, headers, args.retries, args.retry_interval, msg_id)
        if resp is None or resp.status_code != 200:
            return 1
        if spec.sim_answer is not None:  # the platform polls the answer instead of receiving a message
            return spec.sim_answer(bot, send, resp.content)
        if not args.wait:
            return 0
        deadline = time.monotonic() + args.wait
        shown: dict[int, str] = {}
        settle_until: float | None = None
        while time.monotonic() < deadline:
            msgs = client.get(f"{args.sim}/sim/messages", params={"bot": bot.id}).json()[before:]
            for m in msgs:
                if shown.get(m["seq"]) != m["content"]:  # new, or an edit of a streamed answer
                    shown[m["seq"]] = m["content"]
                    who = m.get("touser") or m.get("chat") or m.get("reply_to") or m.get("token", "")[:12]
                    print(f"answer to {who}: {m['content']}", flush=True)
                    settle_until = time.monotonic() + 1.0  # more parts or edits may follow
            still_writing = any(m.get("streaming") or str(m["content"]).endswith("▌") for m in msgs)
            if settle_until is not None and not still_writing and time.monotonic() >= settle_until:
                return 0
            time.sleep(0.2)
        if settle_until is None:
            print("no answer arrived in time", file=sys.stderr)
            return 1
    return 0


def _media(args: argparse.Namespace) -> tuple[SimMedia, ...]:
    """The files of ``--image``/``--file``/``--voice``, put into the simulator."""
    out: list[SimMedia] = []
    for kind in ("image", "file", "voice"):
        for path in getattr(args, kind) or []:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise SystemExit(f"imrelay-sim: cannot read {path}: {exc.strerror}") from None
            out.append(upload_media(args.sim, data, name=Path(path).name, kind=kind))
    return tuple(out)


def cmd_verify(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    bot = _bot(settings, args.bot)
    echo = str(secrets.randbelow(10**19))
    url_check = spec_for(bot).sim_url_check
    if url_check is None:
        raise SystemExit(f"imrelay-sim: {bot.platform} has no URL verification to simulate")
    query = url_check(bot, echo, time.time())
    resp = httpx.get(f"{args.ingress}/callback/{bot.id}?{query}", timeout=10)
    ok = resp.status_code == 200 and resp.text == echo
    print(f"URL verification {'passed' if ok else 'FAILED'} (HTTP {resp.status_code})")
    return 0 if ok else 1


def cmd_messages(args: argparse.Namespace) -> int:
    params = {"bot": args.bot} if args.bot else {}
    msgs = httpx.get(f"{args.sim}/sim/messages", params=params, timeout=10).json()
    print(json.dumps(msgs, ensure_ascii=False, indent=2))
    return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="imrelay-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"imrelay-sim {__version__}")
    p.add_argument("--config", help="imrelay config file (default: $IMRELAY_CONFIG or ./imrelay.yaml)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="play the platform APIs")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8090)
    s.add_argument(
        "--token-lifetime",
        type=float,
        default=7200.0,
        help="seconds an access token stays valid (the platforms' usual: 7200)",
    )
    s.add_argument(
        "--user-limit",
        type=int,
        default=30,
        help="messages per minute one app may send one member before 45009",
    )
    s = sub.add_parser("send", help="send a signed, encrypted message callback to the ingress")
    s.add_argument("--bot", required=True)
    s.add_argument("--text", default="")
    s.add_argument("--image", action="append", metavar="FILE", help="send a picture (repeatable)")
    s.add_argument("--file", action="append", metavar="FILE", help="send a file")
    s.add_argument("--voice", action="append", metavar="FILE", help="send a voice message")
    s.add_argument("--user", default="alice")
    s.add_argument("--msg-id", help="platform message id (repeat one to simulate a platform retry)")
    s.add_argument("--chat", default="", help="a group chat id (default: a one-to-one chat)")
    s.add_argument("--ingress", default=DEFAULT_INGRESS)
    s.add_argument("--sim", default=DEFAULT_SIM)
    s.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the answer")
    s.add_argument(
        "--retries",
        type=int,
        default=0,
        help="send the callback again after a 5xx or no answer, as the platforms do (usually 3)",
    )
    s.add_argument("--retry-interval", type=float, default=5.0, help="seconds between those retries")
    s = sub.add_parser("verify-url", help="perform the console's callback URL verification")
    s.add_argument("--bot", required=True)
    s.add_argument("--ingress", default=DEFAULT_INGRESS)
    s = sub.add_parser("messages", help="list delivered messages")
    s.add_argument("--bot")
    s.add_argument("--sim", default=DEFAULT_SIM)
    args = p.parse_args(argv)
    if args.cmd == "send" and not (args.text or args.image or args.file or args.voice):
        p.error("send needs --text, --image, --file or --voice")
    if args.cmd == "serve":
        cmd_serve(args)
        return
    handlers = {"send": cmd_send, "verify-url": cmd_verify, "messages": cmd_messages}
    raise SystemExit(handlers[args.cmd](args))


if __name__ == "__main__":
    main()
