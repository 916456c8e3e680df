"""Process plumbing shared by the services: signal-driven shutdown and a uvicorn server that leaves
signal handling to the service that embeds it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Generator

import uvicorn

__all__ = ["EmbeddedServer", "stop_event"]


class EmbeddedServer(uvicorn.Server):
    """uvicorn.Server without its own signal capture: the service decides when to stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def stop_event() -> asyncio.Event:
    """An event set on SIGINT or SIGTERM (call from inside the running loop)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, event.set)
    return event
