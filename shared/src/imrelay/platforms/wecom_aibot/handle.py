"""Where a WeCom AI bot's answer goes: the message's stream (polled in callback mode, pushed on the bot's
socket in long-connection mode), and its ``response_url`` for what does not fit in the stream."""

from __future__ import annotations

from typing import Literal

from ..handle import ReplyHandleBase, SecretURL


class WeComAIBotHandle(ReplyHandleBase):
    kind: Literal["wecom_aibot"] = "wecom_aibot"
    stream_id: str
    mode: Literal["callback", "long_connection"] = "callback"
    response_url: SecretURL = ""  # its ``response_code`` is the credential
    req_id: str = ""  # long connection: the frame the answer streams on
    chatid: str = ""  # long connection: the chat (empty: the sender's direct chat)
