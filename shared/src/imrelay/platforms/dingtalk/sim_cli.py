"""``imrelay-sim send`` for a DingTalk robot in Stream mode: DingTalk pushes the message down one of the
app's Stream connections (held by the connector); the answer comes back through the session webhook."""

from __future__ import annotations

import dataclasses
import sys
import time

import httpx

from ..spec import SimSend
from .config import DingTalkBot


def push_over_stream(bot: DingTalkBot, send: SimSend) -> int:
    m = send.message
    with httpx.Client(timeout=10) as client:
        before = len(client.get(f"{m.sim_url}/sim/messages", params={"bot": bot.id}).json())
        resp = client.post(
            f"{m.sim_url}/sim/dingtalk/push",
            json={
                "bot_id": bot.id,
                "text": m.text,
                "user": m.user,
                "msgid": m.msg_id,
                "chat": m.chat,
                "media": [dataclasses.asdict(x) for x in m.media],
            },
        )
        print(f"message {m.msg_id} -> pushed on a Stream connection ({resp.status_code})", flush=True)
        if resp.status_code == 400:
            print(f"imrelay-sim: {resp.json().get('error')}", file=sys.stderr)
            return 1
        if resp.status_code != 200:
            print(
                "no connector holds a Stream connection of this bot (is imrelay-connector running?)",
                file=sys.stderr,
            )
            return 1
        mid = resp.json()["messageId"]
        deadline = time.monotonic() + (send.wait or 30)
        acked = False
        while time.monotonic() < deadline:
            if not acked and client.get(f"{m.sim_url}/sim/dingtalk/acks").json().get(mid, {}).get("acks"):
                acked = True
                print("acked by the connector (stored)", flush=True)
            new = client.get(f"{m.sim_url}/sim/messages", params={"bot": bot.id}).json()[before:]
            if new:
                for x in new:
                    print(f"answer ({x.get('via')}) in {x.get('chat')}: {x.get('content')}", flush=True)
                return 0
            time.sleep(0.3)
    print("no answer in time", file=sys.stderr)
    return 1
