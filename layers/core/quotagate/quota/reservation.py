"""The values the quota protocol passes around: what a request asks for (:class:`ReservationRequest`)
and what was reserved for it (:class:`Reservation`), with its ``x-ratelimit-*`` headers."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quotagate.quota.windows import WindowCharge, WindowScope, WindowUnit, WindowUsage, format_duration

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence


@dataclass(frozen=True)
class ReservationRequest:
    """What one request asks of its key's and its tenant's windows (``QuotaService.reserve``).

    ``prompt_tokens_estimate + max_output_tokens`` tokens, one request and ``reserve_usd`` dollars
    are reserved in every configured window: together they bound what the provider can bill.
    """

    request_id: str
    key_id: str
    tenant: str
    key_limits: Mapping[str, float | None]
    tenant_limits: Mapping[str, float | None]
    prompt_tokens_estimate: int  # an upper bound of the prompt's tokens
    max_output_tokens: int  # the most output tokens the request can produce (all choices)
    reserve_usd: float  # the worst-case cost of the request
    # How the client's request adds up to ``max_output_tokens`` (e.g. ``n=4 x max_tokens=100 = 400
    # output tokens``) and the parameter that sets it, so a 400 names what was sent.
    output_text: str | None = None
    output_param: str = "max_tokens"
    # The prompt's own upper bound, when ``prompt_tokens_estimate`` also carries output slack (a
    # provider's token factor applied to the output cap): a 400 then tells prompt from output.
    prompt_tokens_bound: int | None = None
    # Who asked for what (tenant, consumer, key_id, auth_type, plan, requested_model, model): with
    # it, the reservation item carries the usage record billing sees.
    usage_fields: Mapping[str, str] | None = None


def ratelimit_headers(usages: Sequence[WindowUsage], now: float, prefer: Sequence[WindowUsage] = ()) -> dict[str, str]:
    """OpenAI-style ``x-ratelimit-*`` headers for the requests and tokens limits that exist.

    Per unit, the reported window is the tightest (least remaining; a window whose ``used`` is
    unknown counts as having its whole limit left) among the key's windows, or the tenant's when
    the key has none; windows in ``prefer`` (the short ones of a 429) take precedence.
    ``x-ratelimit-remaining-*`` is omitted when the ledger did not learn ``used``. On a 429 it is
    exact for the short window; for a window that was not short it is a lower bound (the amount
    this request asked of it), because a cancelled transaction returns only the failed items.
    """
    headers: dict[str, str] = {}
    for unit in (WindowUnit.REQUESTS, WindowUnit.TOKENS):
        candidates = [u for u in prefer if u.charge.unit == unit]
        if not candidates:
            candidates = [u for u in usages if u.charge.unit == unit and u.charge.scope == WindowScope.KEY]
        if not candidates:
            candidates = [u for u in usages if u.charge.unit == unit and u.charge.scope == WindowScope.TENANT]
        if not candidates:
            continue
        best = min(
            candidates,
            key=lambda u: (u.remaining if u.remaining is not None else u.charge.limit, -u.charge.window_end),
        )
        headers[f"x-ratelimit-limit-{unit}"] = str(best.charge.limit)
        if best.remaining is not None:
            headers[f"x-ratelimit-remaining-{unit}"] = str(best.remaining)
        headers[f"x-ratelimit-reset-{unit}"] = format_duration(best.charge.window_end - now)
    return headers


@dataclass
class Reservation:
    """What was reserved for one request; settle it exactly once with QuotaService.settle."""

    request_id: str
    charges: tuple[WindowCharge, ...]
    usages: tuple[WindowUsage, ...]  # used after the reservation, per charge (None: unknown)
    reserved_at: float
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    settled: bool = False
    # The usage record written with the reservation (None: the caller asked for none).
    record: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    # False while the record of a reservation without windows waits for QuotaService.write_record
    # (written while the upstream answers, not before it is called).
    record_written: bool = True
    # Held by QuotaService while it settles or grows the reservation (settled exactly once).
    lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def remaining_unknown(self) -> bool:
        """Whether a window's ``used`` is still unknown (a ledger that learns nothing when it
        reserves): only then is there something for ``QuotaService.read_remaining`` to read."""
        return bool(self.charges) and any(u.used is None for u in self.usages)

    def headers(self, now: float | None = None) -> dict[str, str]:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (only for limits that exist).

        Remaining values are a snapshot taken just after this reservation committed (they include
        it); resets count down to the end of the reported fixed window.
        """
        return ratelimit_headers(self.usages, self.clock() if now is None else now)
