"""Helpers shared by tests in more than one folder."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest

from quotagate_tools.local.apigateway import FakeLambdaContext

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable

# The one fake Lambda context of the tests: the local gateway's own (it invokes the real handlers).
__all__ = ["DEFAULT_NOW", "FakeClock", "FakeLambdaContext", "eventually", "stop_stream_early"]

DEFAULT_NOW = 1_800_000_000.0  # 2027-01-15: a fixed wall-clock second


class FakeClock:
    """Seconds that move only when a test moves them. Call it for the time (what the code under test
    takes as ``clock``); ``advance`` moves it; ``sleep`` / ``async_sleep`` (what a ``sleep`` parameter
    takes) record each wait in ``sleeps`` and move the clock by it instead of waiting."""

    def __init__(self, now: float = DEFAULT_NOW) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


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
