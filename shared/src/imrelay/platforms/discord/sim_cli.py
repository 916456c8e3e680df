"""``imrelay-sim send`` for a Discord bot in long-connection mode: the simulator's Gateway sends the user's
message (mentioning the bot in a guild channel, or a DM) to the bot's session (held by the connector), and
the answer is the reply that appears in the channel, edited while it grows."""

from __future__ import annotations

import dataclasses
import sys
import time

import httpx

from ..spec import SimSend
from .config import DiscordBot
from .delivery import CURSOR


def push_over_gateway(bot: DiscordBot, send: SimSend) -> int:
    m = send.message
    with httpx.Client(timeout=10) as client:
        resp = client.post(
            f"{m.sim_url}/sim/discord/push",
            json={
                "bot": bot.id,
                "text": m.text,
                "user": m.user,
                "channel": m.chat,
                "msg_id": m.msg_id,
                "media": [dataclasses.asdict(x) for x in m.media],
            },
        )
        print(f"message {m.msg_id} -> sent on the bot's Gateway session ({resp.status_code})", flush=True)
        if resp.status_code != 200:
            print(
                "no connector holds this bot's Gateway session (is imrelay-connector running?)",
                file=sys.stderr,
            )
            return 1
        deadline = time.monotonic() + (send.wait or 30)
        shown: dict[int, str] = {}
        settle_until: float | None = None
        while time.monotonic() < deadline:
            mine = client.get(
                f"{m.sim_url}/sim/messages", params={"bot": bot.id, "reply_to": m.msg_id}
            ).json()
            for x in mine:
                if shown.get(x["seq"]) != x["content"]:
                    shown[x["seq"]] = x["content"]
                    print(f"reply: {x['content']}", flush=True)
                    settle_until = time.monotonic() + 1.0
            writing = any(str(x["content"]).endswith(CURSOR) for x in mine)
            if settle_until is not None and not writing and time.monotonic() >= settle_until:
                print(f"answer to {m.user}: {' '.join(shown[k] for k in sorted(shown))}", flush=True)
                return 0
            time.sleep(0.3)
    print("the answer did not finish in time", file=sys.stderr)
    return 1
