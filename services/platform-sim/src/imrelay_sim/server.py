"""The simulator's HTTP server: plays every registered platform's API (each platform's package has its
routes, ``sim.py``), with the platforms' own limits and error codes, and a model.

* ``POST /v1/chat/completions``: a streaming OpenAI-compatible model (see :mod:`imrelay_sim.llm`).
* ``/sim/media``: files users send and bots upload (see :mod:`imrelay_sim.media`).
* ``GET /sim/messages`` lists what was delivered (filters: ``bot``, ``touser``, ``chat``);
  ``DELETE /sim/messages`` clears it; ``GET /sim/stats`` counts calls; ``GET /sim/tokens`` lists the
  access tokens every platform handed out; ``POST /sim/control`` changes limits and lifetimes, expires
  every token, or injects faults: ``fail_next`` (errcodes / HTTP statuses /
  "timeout" for the next send calls), ``fault_rate`` + ``fault_kinds`` (a random share of send calls),
  ``send_delay`` (slow answers), ``invalid_users`` (a platform's "no such receiver"), ``trusted_ips`` (a
  list, or null for none: other caller IPs are refused where the platform checks them). A fault is
  answered before anything is recorded.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imrelay import platforms
from imrelay.config import Settings

from . import media as sim_media
from .llm import routes as llm_routes


class MessageLog:
    """What the simulated platforms delivered, in order, indexed by the keys messages are looked up by
    (an edit finds its message, a test or benchmark lists one conversation's), so a lookup costs the
    same after a hundred thousand messages as after ten. Those keys are set when a message is added and
    never change afterwards (its content, edits and history may)."""

    KEYS = ("bot", "touser", "chat", "token", "reply_to", "platform", "card_id")

    def __init__(self) -> None:
        self._all: list[dict[str, Any]] = []
        self._by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)

    def append(self, message: dict[str, Any]) -> None:
        self._all.append(message)
        for key in self.KEYS:
            if key in message:
                self._by[(key, str(message[key]))].append(message)

    def clear(self) -> None:
        self._all.clear()
        self._by.clear()

    def where(self, **match: str) -> list[dict[str, Any]]:
        """The messages whose ``key`` is ``value`` for every pair given, in order (all with none)."""
        indexed = {k: v for k, v in match.items() if k in self.KEYS and v != ""}
        if not indexed:
            candidates: list[dict[str, Any]] = self._all
        else:
            key = min(indexed, key=lambda k: len(self._by.get((k, indexed[k]), ())))
            candidates = self._by.get((key, indexed[key]), [])
        return [m for m in candidates if all(str(m.get(k, "")) == v for k, v in match.items())]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._all[index]


@dataclass
class SimState:
    token_lifetime: float = 7200.0
    user_limit: int = 30
    user_window: float = 60.0
    webhook_limit: int = 20
    webhook_window: float = 60.0
    apps: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # corpid:agent -> (...)
    secrets_by_corp: dict[str, dict[str, str]] = field(default_factory=dict)  # corp -> secret->agent
    tokens: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # token -> corp, agent, exp
    issued: list[str] = field(default_factory=list)  # every access token any platform handed out
    current: dict[tuple[str, str], str] = field(default_factory=dict)
    bot_of_agent: dict[tuple[str, str], str] = field(default_factory=dict)
    webhook_keys: dict[str, str] = field(default_factory=dict)  # key -> bot id
    messages: MessageLog = field(default_factory=MessageLog)
    sends: dict[tuple[str, ...], deque[float]] = field(default_factory=lambda: defaultdict(deque))
    fail_next: list[int] = field(default_factory=list)
    gettoken_fail_next: list[int] = field(default_factory=list)
    gettoken_delay: float = 0.0
    gettoken_in_flight: int = 0
    fault_rate: float = 0.0  # share of send calls answered with a random transient fault
    fault_kinds: list[str] = field(default_factory=lambda: ["502", "timeout", "45009", "42001", "-1"])
    timeout_delay: float = 5.0  # a "timeout" fault answers this late, having done nothing
    send_delay: float = 0.0  # every send call answers this late
    invalid_users: set[str] = field(default_factory=set)  # message/send answers 81013 for these
    trusted_ips: set[str] | None = None  # None: every caller IP is trusted
    seen: dict[str, float] = field(default_factory=dict)  # a platform's duplicate check: request -> time
    rng: random.Random = field(default_factory=lambda: random.Random(1))  # noqa: S311
    settings: Settings | None = None
    media: dict[str, sim_media.MediaItem] = field(default_factory=dict)  # id -> bytes (imrelay_sim.media)

    def record(self, entry: dict[str, Any], now: float) -> None:
        self.seq += 1
        self.stats["delivered"] += 1
        self.messages.append({"seq": self.seq, "at": now, **entry})

    stats: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seq: int = 0

    @classmethod
    def from_settings(cls, settings: Settings | None) -> SimState:
        return cls(settings=settings)


def create_app(
    settings: Settings | None = None,
    *,
    clock: Callable[[], float] = time.time,
    token_lifetime: float = 7200.0,
    user_limit: int = 30,
) -> Starlette:
    state = SimState.from_settings(settings)
    state.token_lifetime, state.user_limit = token_lifetime, user_limit

    async def list_messages(request: Request) -> Response:
        q = request.query_params
        match = {k: q[k] for k in ("bot", "touser", "chat", "token", "reply_to", "platform") if k in q}
        return JSONResponse(state.messages.where(**match))

    async def clear_messages(_: Request) -> Response:
        state.messages.clear()
        return Response(status_code=204)

    async def stats(_: Request) -> Response:
        return JSONResponse(dict(state.stats))

    async def issued(_: Request) -> Response:
        return JSONResponse(state.issued)

    async def control(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "invalid json"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "expected an object"}, status_code=400)
        for name in (
            "token_lifetime",
            "user_limit",
            "user_window",
            "webhook_limit",
            "webhook_window",
            "gettoken_delay",
            "fault_rate",
            "timeout_delay",
            "send_delay",
        ):
            if name in body:
                setattr(state, name, type(getattr(state, name))(body[name]))
        if "gettoken_fail_next" in body:
            state.gettoken_fail_next = [int(c) for c in body["gettoken_fail_next"]]
        if "fault_kinds" in body:
            state.fault_kinds = [str(k) for k in body["fault_kinds"]]
        if "invalid_users" in body:
            state.invalid_users = {str(u) for u in body["invalid_users"]}
        if "trusted_ips" in body:
            ips = body["trusted_ips"]
            state.trusted_ips = None if ips is None else {str(ip) for ip in ips}
        if "seed" in body:
            state.rng.seed(int(body["seed"]))
        if body.get("expire_tokens"):
            for token, (corp, agent, _) in list(state.tokens.items()):
                state.tokens[token] = (corp, agent, clock() - 1)
        if "fail_next" in body:
            state.fail_next = [int(c) for c in body["fail_next"]]
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/sim/messages", list_messages, methods=["GET"]),
            Route("/sim/messages", clear_messages, methods=["DELETE"]),
            Route("/sim/stats", stats, methods=["GET"]),
            Route("/sim/tokens", issued, methods=["GET"]),
            Route("/sim/control", control, methods=["POST"]),
            *sim_media.routes(state),
            *llm_routes(),
            *(
                route
                for spec in platforms.SPECS
                if spec.sim_routes
                for route in spec.sim_routes(state, clock)
            ),
        ]
    )
