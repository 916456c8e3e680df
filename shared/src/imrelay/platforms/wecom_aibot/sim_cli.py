"""``imrelay-sim send`` for a WeCom AI bot: in long-connection mode WeCom pushes the message down the bot's
socket (held by the connector); in callback mode WeCom polls the answer's stream with refresh callbacks."""

from __future__ import annotations

import dataclasses
import sys
import time

import httpx

from ...answer_streams import stream_id
from ..spec import SimSend
from . import sim
from .config import WeComAIBot


def push_over_socket(bot: WeComAIBot, send: SimSend) -> int:
    m = send.message
    with httpx.Client(timeout=10) as client:
        resp = client.post(
            f"{m.sim_url}/sim/aibot/push",
            json={
                "bot_id": bot.credentials.bot_id,
                "text": m.text,
                "user": m.user,
                "msgid": m.msg_id,
                "chat": m.chat,
                "media": [dataclasses.asdict(x) for x in m.media],
            },
        )
        print(f"message {m.msg_id} -> pushed on the bot's socket ({resp.status_code})", flush=True)
        if resp.status_code != 200:
            print("no connector holds this bot's socket (is imrelay-connector running?)", file=sys.stderr)
            return 1
        deadline = time.monotonic() + (send.wait or 30)
        shown = ""
        sid = stream_id(bot.id, m.msg_id)
        while time.monotonic() < deadline:
            mine = [
                x
                for x in client.get(f"{m.sim_url}/sim/messages", params={"bot": bot.id}).json()
                if x.get("stream_id") == sid or x.get("via") == "send"
            ]
            if mine and mine[-1]["content"] != shown:
                shown = mine[-1]["content"]
                print(f"stream: {shown}", flush=True)
            if mine and mine[-1].get("finish"):
                print(f"answer to {m.user}: {shown}", flush=True)
                return 0
            time.sleep(0.3)
    print("the answer did not finish in time", file=sys.stderr)
    return 1


def poll_answer(bot: WeComAIBot, send: SimSend, first: bytes) -> int:
    m = send.message
    reply = sim.read_reply(bot, first)
    sid = reply["stream"]["id"]
    deadline = time.monotonic() + (send.wait or 30)
    shown = ""
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            query, headers, body = sim.refresh_callback(bot, sid, m.user, time.time())
            resp = client.post(f"{send.ingress}/callback/{bot.id}?{query}", content=body, headers=headers)
            stream = sim.read_reply(bot, resp.content)["stream"]
            if stream["content"] != shown:
                shown = stream["content"]
                print(f"stream {sid[:8]}: {shown}", flush=True)
            if stream["finish"]:
                print(f"answer to {m.user}: {shown}", flush=True)
                return 0
            time.sleep(0.3)
    print("the answer did not finish in time", file=sys.stderr)
    return 1
