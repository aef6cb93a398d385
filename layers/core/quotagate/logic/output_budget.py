"""Output metering against the reservation: the gateway counts the answer as it streams and ends it
only where the reservation ends.

Every request reserves its whole output cap up front (``quotagate.logic.estimate.plan_output``): a
provider keeps generating until it sees the connection close, so the cap it was sent is the only
hard bound of its bill, and nothing is topped up mid-stream. What is left here is the guard against
a provider that ignores its cap: each delta is counted (one running count of the answer, times the
provider's safety factor) before it is forwarded, and a delta that does not fit what was reserved
ends the answer, which the caller closes with ``finish_reason: "length"``.
"""

from __future__ import annotations

import math


class OutputBudget:
    """The output tokens reserved for one request and those counted so far, in the provider's
    tokens: cl100k counts times the provider's safety ``factor`` (applied to the running total, so
    that rounding does not inflate one-token deltas)."""

    def __init__(self, reserved: int, factor: float) -> None:
        self.reserved = reserved
        self.factor = factor
        self.raw = 0  # cl100k tokens admitted

    @property
    def counted(self) -> int:
        return self._scaled(self.raw)

    def _scaled(self, raw: int) -> int:
        return math.ceil(raw * self.factor - 1e-9)

    def admit(self, amount: int) -> bool:
        """Count ``amount`` output tokens if they fit the reservation; False: they do not, and the
        answer must end here."""
        if self._scaled(self.raw + amount) > self.reserved:
            return False
        self.raw += amount
        return True
