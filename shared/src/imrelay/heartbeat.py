"""Keeping something alive while a block runs: a message in progress, a delivery claim."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = ["every"]


@contextlib.asynccontextmanager
async def every(
    interval: float, work: Callable[[], Awaitable[None]], *, finish: bool = False
) -> AsyncIterator[None]:
    """While the block runs, start ``work`` every ``interval`` seconds, one run at a time (a beat while the
    last run is still going is skipped). A timer, not a task: a block shorter than ``interval`` costs no
    more than scheduling and cancelling it. On leaving, a run in flight is cancelled, or awaited with
    ``finish`` (when what comes next needs its result). ``work`` handles its own errors."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()
    timer: asyncio.TimerHandle | None = None

    async def run() -> None:
        await work()

    def beat() -> None:
        nonlocal timer
        if not running:
            task = loop.create_task(run())
            running.add(task)
            task.add_done_callback(running.discard)
        timer = loop.call_later(interval, beat)

    timer = loop.call_later(interval, beat)
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
        for task in list(running):
            if finish:
                with contextlib.suppress(Exception):
                    await task
            else:
                task.cancel()
