"""A second baseline for the ingress: the least a WeCom callback endpoint must do, hand-written on the
same parts and served the same way (uvicorn, one process): read the body, check the signature and the
timestamp, AES-decrypt, parse the XML (the project's own pure functions), store the message in JetStream
and wait for its PubAck (the message id as ``Nats-Msg-Id``), answer ``success``. No bot table, event
model, replay guard, metrics, tracing or connection limits.

Environment: ``BENCH_NATS_URL``, ``BENCH_TOKEN``, ``BENCH_AES_KEY``, ``BENCH_CORP_ID``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from nats.js.api import StreamConfig
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imrelay.errors import CallbackError
from imrelay.platforms.wecom.callbacks import decrypt_post
from imrelay.platforms.wecom.crypto import WeComCrypto

crypto = WeComCrypto(os.environ["BENCH_TOKEN"], os.environ["BENCH_AES_KEY"], os.environ["BENCH_CORP_ID"])
js: nats.js.JetStreamContext | None = None


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    global js
    nc = await nats.connect(os.environ["BENCH_NATS_URL"])
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="MINIMAL_IN", subjects=["minimal.in.>"], duplicate_window=86400))
    yield
    await nc.close()


async def callback(request: Request) -> Response:
    body = await request.body()
    try:
        fields = decrypt_post(crypto, request.query_params, body, time.time(), 300)
    except CallbackError:
        return Response(status_code=400)
    assert js is not None
    await js.publish(
        f"minimal.in.{request.path_params['bot_id']}",
        json.dumps(fields).encode(),
        headers={"Nats-Msg-Id": fields.get("MsgId", "")},
    )
    return Response(b"success", media_type="text/plain")


app = Starlette(routes=[Route("/callback/{bot_id}", callback, methods=["POST"])], lifespan=lifespan)
