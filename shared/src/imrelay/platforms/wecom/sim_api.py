"""The simulator's WeCom API helpers the bot kinds share: WeCom's error answer, the faults a test injects
into send calls (``/sim/control`` ``fail_next``, ``fault_rate``), and the per-window limits."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from imrelay_sim.server import SimState


def err(code: int, msg: str, status: int = 200) -> JSONResponse:
    return JSONResponse({"errcode": code, "errmsg": msg}, status_code=status)


def window_ok(log: deque[float], limit: int, window: float, now: float) -> bool:
    while log and log[0] <= now - window:
        log.popleft()
    return len(log) < limit


async def injected_fault(
    state: SimState, clock: Callable[[], float], token: str | None = None
) -> Response | None:
    """The next queued fault (``fail_next``), else a random one at ``fault_rate``. A fault is answered
    before anything is recorded: the platform did not act on the request."""
    if state.send_delay:
        await asyncio.sleep(state.send_delay)
    if state.fail_next:
        kind = str(state.fail_next.pop(0))
    elif state.fault_rate and state.rng.random() < state.fault_rate:
        kind = state.rng.choice(state.fault_kinds)
    else:
        return None
    state.stats["faults_injected"] += 1
    state.stats[f"fault_{kind}"] += 1
    if kind == "timeout":
        await asyncio.sleep(state.timeout_delay)
        return Response("gateway timeout", status_code=504)
    code = int(kind)
    if 500 <= code <= 599:  # an HTTP status; anything else is a WeCom errcode
        return Response("busy", status_code=code)
    if code == 42001 and token in state.tokens:  # the token expires at this very moment
        corp, agent, _ = state.tokens[token]
        state.tokens[token] = (corp, agent, clock() - 1)
    return err(code, "injected fault")
