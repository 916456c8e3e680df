"""One trace per user message, across processes and NATS hops: ingress -> worker -> backend HTTP ->
sender -> platform HTTP, exported over OTLP (configured only by the standard OTEL_* variables) to a
receiver this test runs."""

from __future__ import annotations

import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imrelay.natsserver import EmbeddedNats

from ..helpers import free_port
from .stack import Stack
from .test_end_to_end import send

pytestmark = pytest.mark.nats

Span = tuple[str, str, str, str]  # service, span name, kind, parent span id
SERVER, CLIENT, CONSUMER = "2", "3", "5"  # OTLP SpanKind values


class Receiver:
    def __init__(self) -> None:
        self.spans: dict[str, list[Span]] = defaultdict(list)
        self.attributes: dict[str, list[dict[str, str | int]]] = defaultdict(list)  # by span name
        self.port = free_port()

        async def traces(request: Request) -> Response:
            req = ExportTraceServiceRequest.FromString(await request.body())
            for rs in req.resource_spans:
                service = next(
                    (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "?"
                )
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        self.spans[sp.trace_id.hex()].append(
                            (service, sp.name, str(sp.kind), sp.parent_span_id.hex())
                        )
                        self.attributes[sp.name].append(
                            {a.key: a.value.string_value or a.value.int_value for a in sp.attributes}
                        )
            return Response(b"", media_type="application/x-protobuf")

        app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def traced(
    nats_server: EmbeddedNats, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Receiver]]:
    root: Path = tmp_path_factory.mktemp("traced")
    with Receiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        s = Stack.create(root, nats_server, extra_env=env)
        s.config["backends"] = {
            "default": {"kind": "openai", "base_url": f"{s.sim_url}/v1", "api_key": "sk-sim", "model": "sim"}
        }
        with s.running():
            yield s, receiver


def test_one_trace_spans_every_hop(traced: tuple[Stack, Receiver]) -> None:
    stack, receiver = traced
    who = f"u{secrets.token_hex(4)}"
    send(stack, "trace me", who)
    stack.wait_for(lambda: stack.messages(touser=who), what="the answer")

    def complete() -> list[Span] | None:
        for spans in list(receiver.spans.values()):
            kinds = {(s[0], s[2]) for s in spans}
            if {
                ("imrelay-ingress", SERVER),
                ("imrelay-worker", CONSUMER),
                ("imrelay-worker", CLIENT),
                ("imrelay-sender", CONSUMER),
                ("imrelay-sender", CLIENT),
            } <= kinds:
                return spans
        return None

    spans = stack.wait_for(complete, what="one trace with every hop", timeout=20)
    roots = [s for s in spans if not s[3]]
    assert len(roots) == 1 and roots[0][0] == "imrelay-ingress"


def test_the_model_call_span_carries_the_genai_attributes(traced: tuple[Stack, Receiver]) -> None:
    stack, receiver = traced
    who = f"u{secrets.token_hex(4)}"
    send(stack, "count my tokens please", who)
    stack.wait_for(lambda: stack.messages(touser=who), what="the answer")
    spans = stack.wait_for(
        lambda: [a for a in receiver.attributes["chat sim"] if a.get("gen_ai.usage.input_tokens") == 4],
        what="the model span",
    )
    # the simulator counts a token a word: 4 in the question, 6 pieces in "You said: count my tokens please"
    assert spans[0] == {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "sim",
        "gen_ai.usage.input_tokens": 4,
        "gen_ai.usage.output_tokens": 6,
    }
