"""Helpers shared by tests in more than one folder."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest


async def stop_stream_early(events: AsyncGenerator[Any, None], how: str, received: int = 3) -> None:
    """Take ``received`` events of a provider stream, then stop it: ``how`` = "aclose", or "cancel",
    the gateway's way (a pending ``__anext__`` cancelled, then ``aclose``)."""
    for _ in range(received):
        await events.__anext__()
    if how == "aclose":
        await events.aclose()
    else:
        pending = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.05)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await events.aclose()


def eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Whether ``predicate`` becomes true within ``timeout`` seconds. For counters a server updates
    just after it has sent the last byte, which a client can read first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
