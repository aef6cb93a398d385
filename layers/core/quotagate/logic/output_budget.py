"""Output metering: the gateway counts the answer as it streams and keeps the reservation ahead of it.

A request reserves its prompt and an initial slice of output. Each streamed delta is counted with
tiktoken (times the provider's safety factor, at least one token per non-empty delta) before it is
forwarded. When the unused part of the output reservation falls below a threshold, a top-up (a
conditional write on the same windows, refused when a window has no room) runs in the background,
ahead of need, so chunks do not wait for the store. A delta that does not fit the reservation waits
for the top-up in flight or asks for one; only when the store refuses, or the request's output cap
is reached, is the answer cut, and the caller ends it with ``finish_reason: "length"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

MIN_TOP_UP = 16  # tokens: below this a refused top-up is not split further


class OutputBudget:
    """The output tokens reserved for one request and those counted so far, in the provider's
    tokens: cl100k counts times the provider's safety ``factor`` (applied to the running total, so
    that rounding does not inflate one-token deltas).

    ``top_up(n)`` adds ``n`` tokens to the reservation in the store (True) or is refused (False).
    ``ceiling`` is the most output the request may need (its cap, in counted tokens).
    """

    def __init__(
        self, reserved: int, ceiling: int, step: int, factor: float, top_up: Callable[[int], Awaitable[bool]] | None
    ) -> None:
        self.reserved = reserved
        self.ceiling = max(ceiling, reserved)  # never reserve past the request's output cap
        self.step = max(step, MIN_TOP_UP)
        self.factor = factor
        self.raw = 0  # cl100k tokens admitted
        self.top_ups = 0
        self.exhausted = top_up is None or self.reserved >= self.ceiling
        self._top_up = top_up
        self._task: asyncio.Task[None] | None = None

    @property
    def counted(self) -> int:
        return self._scaled(self.raw)

    def _scaled(self, raw: int) -> int:
        return math.ceil(raw * self.factor - 1e-9)

    @property
    def threshold(self) -> int:
        return max(MIN_TOP_UP, self.step // 2)

    def _next_amount(self) -> int:
        # Grow geometrically (few writes for long answers), never past the cap.
        return min(max(self.step, self.reserved // 2), self.ceiling - self.reserved)

    async def _grow(self) -> None:
        amount = self._next_amount()
        while amount > 0:
            if await self._top_up(amount):  # type: ignore[misc]
                self.reserved += amount
                self.top_ups += 1
                if self.reserved >= self.ceiling:
                    self.exhausted = True
                return
            if amount <= MIN_TOP_UP:
                break
            amount = max(MIN_TOP_UP, amount // 2)  # the window may still have room for less
        self.exhausted = True

    def _start(self) -> None:
        if self._task is None and not self.exhausted:
            self._task = asyncio.ensure_future(self._grow())
            self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            self.exhausted = True  # a failing store never lets the answer run past its reservation

    async def admit(self, amount: int) -> bool:
        """Count ``amount`` output tokens if they fit the reservation (topping it up as needed);
        False: they do not fit and cannot be made to, so the answer must end here."""
        while self._scaled(self.raw + amount) > self.reserved:
            if self._task is None:
                if self.exhausted:
                    return False
                self._start()
            task = self._task
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)
                if self._task is task and task.done():
                    self._done(task)
        self.raw += amount
        if self.reserved - self.counted < self.threshold:
            self._start()  # ahead of need, in the background
        return True

    async def close(self) -> None:
        """Wait for a top-up in flight (its write must land before settlement reads the charges)."""
        task = self._task
        if task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)
