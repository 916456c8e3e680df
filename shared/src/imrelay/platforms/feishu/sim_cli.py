"""``imrelay-sim send`` for a Feishu / Lark bot in long-connection mode: Feishu pushes the message down one
of the app's sockets (held by the connector replicas); the answer comes back as a reply (a streamed card)."""

from __future__ import annotations

import dataclasses
import sys
import time

import httpx

from ..spec import SimSend
from .config import FeishuBot


def push_over_socket(bot: FeishuBot, send: SimSend) -> int:
    m = send.message
    message_id = f"om_{m.msg_id}"
    with httpx.Client(timeout=10) as client:
        resp = client.post(
            f"{m.sim_url}/sim/feishu/push",
            json={
                "app_id": bot.credentials.app_id,
                "text": m.text,
                "user": m.user,
                "chat": m.chat,
                "message_id": message_id,
                "event_id": f"ev{m.msg_id}",
                "media": [dataclasses.asdict(x) for x in m.media],
            },
        )
        print(f"message {message_id} -> pushed on one of the app's sockets ({resp.status_code})", flush=True)
        if resp.status_code != 200:
            print("no connector holds this app's connection (is imrelay-connector running?)", file=sys.stderr)
            return 1
        deadline = time.monotonic() + (send.wait or 30)
        shown = ""
        settle: float | None = None
        while time.monotonic() < deadline:
            mine = [
                x
                for x in client.get(f"{m.sim_url}/sim/messages", params={"bot": bot.id}).json()
                if x.get("reply_to") == message_id
            ]
            if mine and mine[-1]["content"] != shown:
                shown = mine[-1]["content"]
                print(f"reply: {shown}", flush=True)
                settle = time.monotonic() + 1.0
            if mine and not mine[-1].get("streaming") and settle is not None and time.monotonic() >= settle:
                print(f"answer to {m.user}: {shown}", flush=True)
                return 0
            time.sleep(0.3)
    print("the answer did not finish in time", file=sys.stderr)
    return 1
