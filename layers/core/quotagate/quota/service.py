"""Quota logic: which windows a request is charged in, 400 vs 429, headers, settlement.

No I/O except through the ledger. The flow per request:

1. ``reserve`` before the upstream call: ``prompt estimate + max output`` tokens, one request and
   the worst-case dollars, in every configured window of the key and of its tenant, all or
   nothing. A request that could never fit a window (or exceeds ``max_tokens_per_request``) is a
   400; a request that does not fit *now* is a 429.
2. ``settle`` exactly once after the upstream call, whatever happened: each window receives
   ``actual - reserved`` (a refund when negative), in the window items recorded at reservation.

Store failures: a reservation the ledger gave up on is refused with a retryable 503
``quota_store_busy`` (contention, throttling: never the client's limit) or 503
``quota_store_unavailable`` (timeouts, 5xx:
the outcome is unknown, so a zero-usage compensating settle runs first). A settlement or
compensation the ledger cannot write goes to the durable ``settlement_queue`` (when configured).
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from quotagate import settings
from quotagate.errors import GatewayError
from quotagate.quota.exceptions import LedgerBusy, QuotaExceeded, ReservationExists
from quotagate.quota.reservation import Reservation, ReservationRequest, ratelimit_headers
from quotagate.quota.settlements import PendingSettlement, SettlementQueue, compensation
from quotagate.quota.slots import LeaseRenewer
from quotagate.quota.windows import (
    CONCURRENCY_LIMIT,
    PER_REQUEST_LIMIT,
    WINDOW_LIMITS,
    WindowCharge,
    WindowScope,
    WindowUnit,
    WindowUsage,
    iso_utc,
    make_charge,
    retry_after_seconds,
    usd_to_micros_ceil,
)
from quotagate.usage import record as usage_record

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from quotagate.quota.ledger import QuotaLedger

TOO_LARGE_CODE = "request_too_large_for_limit"
STORE_BUSY_CODE = "quota_store_busy"
# A per-minute 429's retry-after is the reset plus 0..this many seconds, drawn per response.
RETRY_JITTER_SECONDS = 4
# How long a refused reservation's compensating settlement may hold the 503 back: one attempt.
COMPENSATION_WAIT_SECONDS = 0.75
SCOPE_WORDS = {WindowScope.KEY: "this API key", WindowScope.TENANT: "this tenant"}


def _amount_text(unit: WindowUnit, value: int | None) -> str:
    if value is None:
        return "unknown"
    if unit == WindowUnit.USD:
        dollars = value / 1_000_000
        return f"${dollars:.2f}" if value % 10_000 == 0 else f"${dollars:.6f}".rstrip("0")
    return f"{value} {unit}"


class QuotaService:
    def __init__(
        self,
        ledger: QuotaLedger,
        clock: Callable[[], float] = time.time,
        settlement_queue: SettlementQueue | None = None,
        on_warning: Callable[..., None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._rng = random.Random()  # retry-after jitter (tests may seed it)
        self.settlement_queue = settlement_queue
        self._warn = on_warning or (lambda message, **fields: None)
        self._renewer = LeaseRenewer(ledger.renew_leases)
        # One store attempt (connect + read timeout), like the ledger's, at QG_QUOTA_TIME_SCALE.
        self.compensation_wait_seconds = COMPENSATION_WAIT_SECONDS * settings.quota_time_scale()

    @property
    def blocking(self) -> bool:
        """Whether its calls may wait on I/O (its ledger's, or the settlement queue's when a
        settlement cannot be written): the proxy then makes them in a worker thread."""
        return self._ledger.blocking or self.settlement_queue is not None

    # ---- planning (pure) -------------------------------------------------------------------------

    def plan_windows(self, request: ReservationRequest, now: float | None = None) -> list[WindowCharge]:
        """One charge per configured window limit per scope. Raises GatewayError when the request
        alone can never fit (400, or 429 ``insufficient_quota`` for a limit of 0)."""
        prompt_tokens_estimate, max_output_tokens = request.prompt_tokens_estimate, request.max_output_tokens
        output_param = request.output_param
        if prompt_tokens_estimate < 0 or max_output_tokens < 0:
            raise ValueError("token counts must be non-negative")
        now = self._clock() if now is None else now
        tokens = int(prompt_tokens_estimate) + int(max_output_tokens)
        usd_micros = usd_to_micros_ceil(request.reserve_usd)
        scopes = [
            (WindowScope.KEY, request.key_id, request.key_limits or {}),
            (WindowScope.TENANT, request.tenant, request.tenant_limits or {}),
        ]
        for scope, _, limits in scopes:
            cap = limits.get(PER_REQUEST_LIMIT)
            if cap is not None and max_output_tokens > cap:
                sent = request.output_text or f"{output_param} is {max_output_tokens}"
                raise GatewayError(
                    400,
                    f"The request asks for {sent}, more than {SCOPE_WORDS[scope]}'s "
                    f"{PER_REQUEST_LIMIT} limit of {int(cap)}. Lower {output_param}.",
                    code=TOO_LARGE_CODE,
                    param=output_param,
                )
        amounts = {
            WindowUnit.REQUESTS: 1,
            WindowUnit.TOKENS: tokens,
            WindowUnit.USD: usd_micros,
            WindowUnit.CONCURRENT: 1,
        }
        charges: list[WindowCharge] = []
        for scope, scope_id, limits in scopes:
            for name, (unit, _) in WINDOW_LIMITS.items():
                value = limits.get(name)
                if value is None:
                    continue
                if not scope_id:
                    raise ValueError(f"{scope} limits given without a {scope} id")
                charge = make_charge(scope, scope_id, name, value, amounts[unit], now)
                if charge.amount > charge.limit:
                    raise self._too_large(charge, request)
                charges.append(charge)
        return charges

    @staticmethod
    def _too_large(charge: WindowCharge, request: ReservationRequest) -> GatewayError:
        who = SCOPE_WORDS[charge.scope]
        limit_text = _amount_text(charge.unit, charge.limit)
        if charge.limit == 0:
            # No request can ever pass: a budget of zero, not something a retry fixes.
            return GatewayError(
                429,
                f"{who.capitalize()} has no allowance for {charge.limit_name} (the limit is 0).",
                type=charge.unit,
                code="insufficient_quota",
                headers={"x-should-retry": "false"},
            )
        prompt = int(request.prompt_tokens_estimate)
        if request.prompt_tokens_bound is not None:
            prompt = min(prompt, int(request.prompt_tokens_bound))
        if charge.unit == WindowUnit.TOKENS and prompt > charge.limit:
            return GatewayError(
                400,
                f"The prompt (about {prompt} tokens) is larger than {who}'s {charge.limit_name} "
                f"limit of {limit_text}. Shorten the messages.",
                code=TOO_LARGE_CODE,
                param="messages",
            )
        if charge.unit == WindowUnit.TOKENS:
            output = charge.amount - prompt
            # The output bound may be the client's cap times a provider's token factor: the advice
            # is scaled back to the client's own unit, so that the advised cap fits.
            advised = (charge.limit - prompt) * int(request.max_output_tokens) // max(1, output)
            return GatewayError(
                400,
                f"This request may use {prompt} prompt + {output} output = {charge.amount} tokens, "
                f"more than {who}'s {charge.limit_name} limit of {limit_text}. "
                f"Lower max_tokens to at most {advised}.",
                code=TOO_LARGE_CODE,
                param="max_tokens",
            )
        return GatewayError(
            400,
            f"This request may cost up to {_amount_text(WindowUnit.USD, charge.amount)}, more than {who}'s "
            f"{charge.limit_name} budget of {limit_text}. Lower max_tokens.",
            code=TOO_LARGE_CODE,
            param="max_tokens",
        )

    # ---- reserve / settle ------------------------------------------------------------------------

    def reserve(self, request: ReservationRequest) -> Reservation:
        """Reserve the request's worst case in every window, all or nothing.

        With ``request.usage_fields``, the reservation item also carries the usage record that becomes
        a ``Request Settled`` event — even for a key without limits, so that billing sees every
        request. Such a key's reservation writes nothing here: its record's put
        (:meth:`write_record`) runs while the upstream answers, and its settlement after.

        Raises GatewayError: 400 (can never fit), 429 ``rate_limit_exceeded`` (a per-minute window
        is short, or the store stayed contended) or 429 ``insufficient_quota`` (a day/month budget
        is short), each with ``retry-after`` and ``x-ratelimit-*`` headers.
        """
        now = self._clock()
        charges = self.plan_windows(request, now=now)
        request_id = request.request_id
        record = None
        if request.usage_fields is not None:
            budgets = {
                usage_record.budget_field(c.scope, c.limit_name): c.limit
                for c in charges
                if (c.scope, c.limit_name) in usage_record.BUDGET_LIMITS
            }
            record = usage_record.reservation_record(
                request_id=request_id,
                prompt_tokens=int(request.prompt_tokens_estimate),
                completion_tokens=int(request.max_output_tokens),
                cost_usd_micros=usd_to_micros_ceil(request.reserve_usd),
                started_at=now,
                budgets=budgets,
                **request.usage_fields,
            )
        if not charges:
            # No window to guard: nothing stands before the upstream call. The usage record (if
            # any) is written by write_record while the upstream answers, or at settlement.
            return Reservation(request_id, (), (), now, self._clock, record=record, record_written=record is None)
        try:
            usages = (
                self._ledger.reserve(request_id, charges, record)
                if record
                else self._ledger.reserve(request_id, charges)
            )
        except QuotaExceeded as exceeded:
            raise self._rejected(exceeded, charges, now) from None
        except LedgerBusy as busy:
            if busy.outcome_unknown:
                # The reservation may have committed: release it before the client hears anything,
                # waiting at most one store attempt; a stalled store's compensation goes on behind the
                # 503 (applied, else queued, else closed by the reaper).
                compensating = self._compensate_in_background(
                    compensation(request_id, charges, usage_record.refunded(record))
                )
                compensating.join(self.compensation_wait_seconds)
                raise GatewayError(
                    busy.status,
                    "The quota store did not answer in time; nothing was charged. Please retry shortly.",
                    type="api_error",
                    code="quota_store_unavailable",
                    headers={"retry-after": "1"},
                ) from None
            # Contention or throttling in the store is not the client's limit: no window refused.
            raise GatewayError(
                busy.status,
                "The quota store is busy; nothing was charged. Please retry shortly.",
                type="api_error",
                code=STORE_BUSY_CODE,
                headers={"retry-after": "1"},
            ) from None
        # The ledger's charges: a concurrency charge carries the slot it leased (quota.slots).
        reserved = tuple(u.charge for u in usages) if len(usages) == len(charges) else tuple(charges)
        if any(c.slot is not None for c in reserved):
            self._renewer.hold(request_id, reserved)
        return Reservation(request_id, reserved, tuple(usages), now, self._clock, record=record)

    def write_record(self, reservation: Reservation) -> None:
        """Write the usage record of a reservation without windows (an open reservation item, as
        for any other request: the reaper closes it if the proxy dies before settling). The proxy
        runs this concurrently with the upstream call; settle writes it if it has not landed."""
        if reservation.record_written or reservation.record is None:
            return
        try:
            self._ledger.reserve(reservation.request_id, (), reservation.record)
        except ReservationExists:
            pass  # an earlier attempt landed without our learning it
        reservation.record_written = True

    def _compensate_in_background(self, pending: PendingSettlement) -> threading.Thread:
        def run() -> None:
            try:
                self._apply_or_queue(pending)
            except Exception as failed:
                # Neither applied nor queued: the reaper closes the reservation if it committed.
                self._warn("compensating settlement failed", request_id=pending.request_id, error=str(failed))

        thread = threading.Thread(target=run, name=f"compensate-{pending.request_id}", daemon=True)
        thread.start()
        return thread

    def _apply_or_queue(self, pending: PendingSettlement) -> bool:
        """Settle now, or hand the settlement to the durable retry path. Raises only when neither
        worked (the reservation then stays charged until the reaper closes it)."""
        try:
            return pending.apply(self._ledger)
        except LedgerBusy as busy:
            if self.settlement_queue is None:
                raise
            self.settlement_queue.put(pending)
            self._warn(
                "settlement queued for retry",
                request_id=pending.request_id,
                kind=pending.kind,
                error=str(busy),
            )
            return True

    def _rejected(self, exceeded: QuotaExceeded, charges: Sequence[WindowCharge], now: float) -> GatewayError:
        # The binding window is the one that resets last: the request cannot pass before it does
        # (a full concurrency counter frees up when any request ends: it binds only on its own).
        binding = max(
            exceeded.shortfalls,
            key=lambda u: now if u.charge.unit == WindowUnit.CONCURRENT else u.charge.window_end,
        )
        charge = binding.charge
        if charge.unit == WindowUnit.CONCURRENT:
            # When a slot really frees: a holder that stopped renewing loses it when its lease ends.
            frees_in = max(1, math.ceil(exceeded.frees_at - now)) if exceeded.frees_at is not None else 1
            return GatewayError(
                exceeded.status,
                f"Too many concurrent requests for {SCOPE_WORDS[charge.scope]}: {binding.used} in flight, "
                f"the limit ({CONCURRENCY_LIMIT}) is {charge.limit}. Retry when one has finished.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": str(frees_in)},
            )
        retry_after = retry_after_seconds(charge.window_end, now)
        who = SCOPE_WORDS[charge.scope]
        unit = charge.unit
        detail = (
            f"limit {_amount_text(unit, charge.limit)}, used {_amount_text(unit, binding.used)}, "
            f"requested {_amount_text(unit, charge.amount)}"
        )
        headers: dict[str, str] = {}
        if charge.is_rate_limit:
            code = "rate_limit_exceeded"
            # Spread the refused clients over a few seconds after the reset, so they do not all
            # come back in the same 100 ms (never before the window resets).
            retry_after += self._rng.randint(0, RETRY_JITTER_SECONDS)
            message = (
                f"Rate limit reached for {who} on {charge.limit_name}: {detail}. Please try again in {retry_after}s."
            )
        else:
            code = "insufficient_quota"
            message = (
                f"Quota exceeded for {who} on {charge.limit_name}: {detail}. "
                f"The window resets at {iso_utc(charge.window_end)}."
            )
            headers["x-should-retry"] = "false"  # a budget: SDKs must not retry it
        headers["retry-after"] = str(retry_after)
        # The x-ratelimit-* headers describe the window that refused (and its unit's sibling of the
        # same period, e.g. requests and tokens per minute), never a window of another period.
        known = {u.charge.item_key: u for u in exceeded.observed}
        usages = [known.get(c.item_key, WindowUsage(c, None)) for c in charges if c.period == charge.period]
        prefer = [binding, *(u for u in exceeded.shortfalls if u.charge.period == charge.period)]
        headers.update(ratelimit_headers(usages, now, prefer=prefer))
        return GatewayError(exceeded.status, message, type=charge.unit, code=code, headers=headers)

    def settle(
        self,
        reservation: Reservation,
        prompt_tokens: int,
        completion_tokens: int,
        actual_usd: float,
        settlement: usage_record.Settlement | None = None,
        cache_tokens: Mapping[str, int] | None = None,
    ) -> bool:
        """Charge actual usage instead of the reservation, exactly once.

        Per window: requests +0; tokens ``prompt + completion - reserved``; usd
        ``ceil(actual_usd * 1e6) - reserved`` (negative: a refund). Returns False if this
        reservation was already settled (nothing changes).
        """
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts must be non-negative")
        tokens = int(prompt_tokens) + int(completion_tokens)
        usd_micros = usd_to_micros_ceil(actual_usd)
        # A concurrency slot is given back: 0 in flight once the request has ended.
        actual = {
            WindowUnit.REQUESTS: None,
            WindowUnit.TOKENS: tokens,
            WindowUnit.USD: usd_micros,
            WindowUnit.CONCURRENT: 0,
        }
        adjustments = []
        for charge in reservation.charges:
            value = actual[charge.unit]
            adjustments.append((charge, 0 if value is None else value - charge.amount))
        record = None
        if reservation.record is not None:
            settlement = settlement or usage_record.Settlement(
                usage_record.UsageOutcome.OK, 200, usage_record.UsageSource.PROVIDER
            )
            record = usage_record.settled_record(
                reservation.record,
                target=settlement.target,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd_micros=usd_micros,
                usage_source=settlement.usage_source,
                outcome=settlement.outcome,
                http_status=settlement.http_status,
                time_to_first_byte_ms=settlement.time_to_first_byte_ms,
                duration_ms=settlement.duration_ms,
                failovers=settlement.failovers,
            )
        self._renewer.release(reservation.request_id)
        with reservation.lock:
            if reservation.settled:
                return False
            self.write_record(reservation)  # a no-op unless the early write failed
            if not reservation.charges and record is None:
                reservation.settled = True
                return True
            result = self._apply_or_queue(
                PendingSettlement(
                    reservation.request_id,
                    tuple(adjustments),
                    {
                        "prompt_tokens": int(prompt_tokens),
                        "completion_tokens": int(completion_tokens),
                        "usd_micros": usd_micros,
                        # Prompt-cache reads and writes (part of prompt_tokens), priced apart.
                        **{name: int(n) for name, n in (cache_tokens or {}).items() if n},
                    },
                    record=record,
                )
            )
            reservation.settled = True
            return result

    def top_up(self, reservation: Reservation, extra_tokens: int, extra_usd: float) -> bool:
        """Grow an open reservation by ``extra_tokens`` and ``extra_usd`` in the very windows it
        reserved (guard ``used <= limit - n``), all or nothing. False: refused (a window has no
        room, the store is unsure, or the reservation is settled) and nothing changed here."""
        amounts = {WindowUnit.TOKENS: int(extra_tokens), WindowUnit.USD: usd_to_micros_ceil(extra_usd)}
        increases = [(c, amounts[c.unit]) for c in reservation.charges if amounts.get(c.unit)]
        with reservation.lock:
            if reservation.settled:
                return False
        if not increases:
            return True  # no token or dollar window: nothing bounds the output
        try:
            grown = self._ledger.top_up(reservation.request_id, increases)
        except LedgerBusy:
            return False  # if it did commit, the window keeps the extra charge: the safe side
        if grown:
            added = {c.item_key: n for c, n in increases}
            with reservation.lock:
                reservation.charges = tuple(
                    replace(c, amount=c.amount + added.get(c.item_key, 0)) for c in reservation.charges
                )
        return grown

    # ---- refused requests ------------------------------------------------------------------------

    def count_refused(
        self, key_id: str, tenant: str, key_limits: Mapping[str, float], tenant_limits: Mapping[str, float]
    ) -> int:
        """Count one refused request in the key's and the tenant's request-count windows (never
        tokens or dollars; no reservation item): a caller's refused requests use its request rate
        like any other, so bad input cannot buy gateway work for free. Returns how many windows it
        counted in. Raises LedgerBusy when the store failed (the caller treats it as best effort)."""
        now = self._clock()
        charges = [
            make_charge(scope, scope_id, name, value, 1, now)
            for scope, scope_id, limits in (
                (WindowScope.KEY, key_id, key_limits),
                (WindowScope.TENANT, tenant, tenant_limits),
            )
            if scope_id
            for name, value in limits.items()
            if value is not None and name in WINDOW_LIMITS and WINDOW_LIMITS[name][0] == WindowUnit.REQUESTS
        ]
        if charges:
            self._ledger.count_requests(charges)
        return len(charges)

    # ---- reads -----------------------------------------------------------------------------------

    def room(self, request: ReservationRequest) -> tuple[int | None, float | None]:
        """What ``request``'s tightest token window and tightest dollar window have left now (tokens,
        dollars; None: no such window): one strongly consistent read, so that a request whose
        output cap the gateway chooses can be given a cap that fits. Advice only: a window item not
        written yet (or not read) counts as unused, and the reservation's own guard still decides."""
        charges = self.plan_windows(replace(request, prompt_tokens_estimate=0, max_output_tokens=0, reserve_usd=0.0))
        left: dict[WindowUnit, int] = {}
        for charge, used in zip(charges, self._ledger.read_used(charges), strict=True):
            if charge.unit in (WindowUnit.TOKENS, WindowUnit.USD):
                remaining = max(0, charge.limit - (used or 0))
                left[charge.unit] = min(left.get(charge.unit, remaining), remaining)
        tokens, micros = left.get(WindowUnit.TOKENS), left.get(WindowUnit.USD)
        return tokens, None if micros is None else micros / 1_000_000

    def read_remaining(self, reservation: Reservation) -> None:
        """Fill in ``used`` of the reservation's windows for its ``x-ratelimit-remaining-*`` headers
        (one strongly consistent read, best effort). The proxy runs it concurrently with the
        upstream call, so the reservation is the only store round trip before the first byte."""
        if not reservation.remaining_unknown:
            return
        charges = reservation.charges  # one snapshot: a top-up may replace the tuple meanwhile
        used = self._ledger.read_used(charges)
        reservation.usages = tuple(WindowUsage(c, u) for c, u in zip(charges, used, strict=True))
