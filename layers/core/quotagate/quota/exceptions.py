"""Exceptions of the quota package, each with the HTTP status the quota service answers it with."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING

from quotagate.quota.windows import WindowCharge, WindowUsage

if TYPE_CHECKING:
    from collections.abc import Sequence


class QuotaExceeded(Exception):
    """A reservation did not fit: nothing was reserved in any window.

    ``charge``/``used`` describe the first window that was short (``used`` is its current value,
    ``None`` if unknown); ``shortfalls`` lists every window reported short; ``observed`` has what
    the call learned about every window (short ones exact, the others as bounds), for headers.
    """

    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(
        self,
        charge: WindowCharge,
        used: int | None,
        shortfalls: Sequence[WindowUsage] = (),
        observed: Sequence[WindowUsage] = (),
        frees_at: float | None = None,
    ):
        self.charge = charge
        self.used = used
        # For a concurrency limit: when a slot really frees (a dead holder's lease ends), if known.
        self.frees_at = frees_at
        self.shortfalls: tuple[WindowUsage, ...] = tuple(shortfalls) or (WindowUsage(charge, used),)
        self.observed: tuple[WindowUsage, ...] = tuple(observed) or self.shortfalls
        super().__init__(f"{charge.pk} {charge.sk}: used {used}, limit {charge.limit}, requested {charge.amount}")


class LedgerBusy(Exception):
    """The ledger stayed contended (transaction conflicts, throttling) through every retry: the
    client may retry shortly (a 503: the store's limit, never the client's)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    outcome_unknown = False


class LedgerUnavailable(LedgerBusy):
    """The store failed (timeouts, connection errors, 5xx) through every retry, and at least one
    attempt may have been applied without us learning it: settle the request id (zero usage for a
    reservation) to be sure, or hand the settlement to the durable retry path."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    outcome_unknown = True


class ReservationExists(Exception):
    """A reservation with this request id exists and was not made by this call (request ids are
    unique: a gateway bug, not the client's mistake, so it maps to no client status)."""
