"""Admission, the part of the request path every endpoint shares before its upstream call:
identity → limits → resolve → circuit state → order → reserve. And the end every endpoint shares:
settlement, exactly once, with the outcome's metrics.

An endpoint parses its body, then asks :meth:`Admission.route` for the targets it may try (in the
router's order, open circuits left out, its own capability filter applied), sizes its reservation
(chat: prompt and output plan; embeddings: the input's tokens) and calls :meth:`Admission.reserve`.
The :class:`Admitted` request it gets back carries the outcome, the deadline, the failover loop
(:mod:`quotagate.logic.failover`) and the settlement.

The request's clock starts when the endpoint received it (``started``), not after the reservation:
the latency metrics and the usage record's durations include the gateway's own work."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from anyio import to_thread

from quotagate.errors import invalid_request
from quotagate.logic import refusals
from quotagate.logic.breaker import caller_of
from quotagate.logic.estimate import Room
from quotagate.logic.failover import Deadline, Failover, log_warning, unavailable
from quotagate.logic.request_types import Outcome, usage_fields
from quotagate.logic.store_calls import quota_call
from quotagate.quota.reservation import Reservation, ReservationRequest
from quotagate.usage.record import Settlement, UsageOutcome, source_of

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from quotagate.config import Target
    from quotagate.identity import Identity
    from quotagate.logic import router as routing
    from quotagate.logic.metering import Usage
    from quotagate.logic.pricing import PriceModifiers
    from quotagate.logic.request_types import GatewayServices, Limits


@dataclass
class Route:
    """Who asked for which model, what they may spend, and the targets to try, in order."""

    identity: Identity
    request_id: str
    requested_model: str
    limits: Limits
    resolution: routing.Resolution
    targets: list[Target]  # the alias's targets the endpoint can use (the reservation covers them all)
    order: list[Target]  # those to try, in the router's order, open circuits left out
    started: float
    deadline: Deadline


@dataclass(frozen=True)
class ReservationSize:
    """What one request reserves: an upper bound of what any of its targets can bill."""

    prompt_tokens: int
    output_tokens: int
    usd: float
    output_text: str | None = None  # how the output reservation is explained in a 429
    output_param: str = "max_tokens"
    prompt_bound: int | None = None  # the prompt's own bound when prompt_tokens carries output slack


class Admission:
    """Admits requests through one gateway's services (see the module docstring)."""

    def __init__(self, gateway: GatewayServices) -> None:
        self.gateway = gateway

    async def route(
        self,
        identity: Identity,
        requested_model: str,
        request_id: str,
        started: float,
        usable: Callable[[Target], bool] | None = None,
        capability: str = "this request",
    ) -> Route:
        """Limits, resolution and order. ``usable`` keeps the targets the endpoint can call (an
        alias with none is a 400 naming ``capability``). Every circuit open: 503, nothing reserved."""
        gateway = self.gateway
        if gateway.limits_at_hand(identity):
            limits = gateway.limits_for(identity)  # cached records: no store read, no worker thread
        else:
            limits = await to_thread.run_sync(gateway.limits_for, identity)
        resolution = gateway.resolve(requested_model, limits)
        targets = [t for t in resolution.targets if usable is None or usable(t)]
        if not targets:
            raise invalid_request(
                f"The model '{requested_model}' does not support {capability}.", "model", "unsupported_for_model"
            )
        ids = [t.id for t in targets]
        caller = caller_of(identity.tenant)  # its own circuits count too (logic/breaker.py)
        views = gateway.breaker.cached_views(ids, caller)  # no I/O while this container's copy is fresh
        if views is None:
            views = await to_thread.run_sync(gateway.breaker.views, ids, caller)
        ranked = gateway.router.order(
            resolution, f"{identity.tenant}/{identity.consumer}", {t: v.state for t, v in views.items()}
        )
        order = ranked if usable is None else [t for t in ranked if t in targets]
        if not order:
            # Every circuit is open: fail fast, before anything is reserved.
            reopen = min(v.open_until for v in views.values()) - gateway.breaker.now()
            raise unavailable(requested_model, reopen)
        deadline = Deadline.starting(gateway.clock, started, resolution.model.deadline, gateway.max_request_seconds)
        return Route(identity, request_id, requested_model, limits, resolution, targets, order, started, deadline)

    async def reserve(self, route: Route, request: ReservationSize) -> Admitted:
        """Reserve the quota (GatewayError 429 when a window has no room) and start the
        remaining-quota read for the ``x-ratelimit-*`` headers, which overlaps the upstream call:
        the reservation is the only store round trip before the first byte, and a key without
        limits makes none (its usage record is written while the upstream answers)."""
        gateway = self.gateway
        identity = route.identity
        asked = _reservation_request(
            route, request, usage_fields(identity, route.requested_model, route.resolution.model.name)
        )
        quota = gateway.quota
        if route.limits.key_limits or route.limits.tenant_limits:
            reservation = await quota_call(quota, quota.reserve, asked)
        else:
            reservation = quota.reserve(asked)  # no window: no store call, no thread
        refusals.mark_reserved()  # the reservation counted this request in its request windows
        outcome = Outcome(
            route.request_id,
            identity,
            route.resolution.model.name,
            started=route.started,
            requested_model=route.requested_model,
            reserved_tokens=request.prompt_tokens + request.output_tokens,
            reserved_usd=request.usd,
        )
        # Nothing more before the upstream call: the remaining-quota read (for the headers; none
        # when the reservation learned every window's use) and a key without limits' usage record
        # are written while the upstream answers (a store that waits on nothing has nothing to
        # overlap: settlement writes the record).
        remaining_read = (
            asyncio.ensure_future(quota_call(quota, quota.read_remaining, reservation))
            if reservation.remaining_unknown
            else None
        )
        record_write = (
            asyncio.ensure_future(to_thread.run_sync(quota.write_record, reservation))
            if quota.blocking and not reservation.record_written
            else None
        )
        return Admitted(gateway, route, reservation, outcome, remaining_read, record_write)

    async def room(self, route: Route, request: ReservationSize) -> Room:
        """What the route's tightest token and dollar windows have left now (one read)."""
        quota = self.gateway.quota
        tokens, usd = await quota_call(quota, quota.room, _reservation_request(route, request))
        return Room(tokens, usd)


def _reservation_request(
    route: Route, request: ReservationSize, record_fields: Mapping[str, str] | None = None
) -> ReservationRequest:
    return ReservationRequest(
        route.request_id,
        route.identity.key_id,
        route.identity.tenant,
        route.limits.key_limits,
        route.limits.tenant_limits,
        request.prompt_tokens,
        request.output_tokens,
        request.usd,
        output_text=request.output_text,
        output_param=request.output_param,
        prompt_tokens_bound=request.prompt_bound,
        usage_fields=record_fields,
    )


class Admitted:
    """A reserved request: its outcome, its failover loop, and its settlement (exactly once)."""

    def __init__(
        self,
        gateway: GatewayServices,
        route: Route,
        reservation: Reservation,
        outcome: Outcome,
        remaining_read: asyncio.Future[None] | None,
        record_write: asyncio.Future[None] | None = None,
    ) -> None:
        self.gateway = gateway
        self.route = route
        self.reservation = reservation
        self.outcome = outcome
        self._remaining_read = remaining_read
        self._record_write = record_write
        self.settled = False
        self.price_modifiers: PriceModifiers | None = None  # what settlement prices beyond the tokens

    @property
    def deadline(self) -> Deadline:
        return self.route.deadline

    def headers(self, target: Target | None = None) -> dict[str, str]:
        """The reservation's ``x-ratelimit-*`` headers and the gateway's own."""
        headers = self.reservation.headers()
        headers["x-quotagate-request-id"] = self.outcome.request_id
        headers["x-quotagate-model"] = self.route.resolution.model.name
        if target is not None:
            headers["x-quotagate-target"] = target.id
        return headers

    def failover(self) -> Failover:
        gateway = self.gateway
        return Failover(
            gateway.breaker,
            gateway.config.timeouts_for,
            self.deadline,
            self.outcome,
            gateway.sleep,
            gateway.max_retry_wait,
        )

    async def remaining_read_done(self) -> None:
        """Wait for the remaining-quota read (done long ago, unless the store is slow); a failure
        only loses header values."""
        task, self._remaining_read = self._remaining_read, None
        if task is None:
            return
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await task

    async def settle(self, target: Target | None, usage: Usage, ended: UsageOutcome, status: int) -> None:
        """Settle at the actual usage of the target that served (nothing when none did), record the
        outcome. Exactly once; survives cancellation; a failing quota store leaves the reservation
        charged (never an overshoot) and the client's answer stands."""
        if self.settled:
            return
        self.settled = True
        outcome, gateway = self.outcome, self.gateway
        with anyio.CancelScope(shield=True):
            outcome.usage, outcome.status = usage, status
            first_byte_at, now = outcome.first_byte_at, gateway.clock()
            settlement = Settlement(
                outcome=ended,
                http_status=status,
                usage_source=source_of(usage.source),
                target=target.id if target is not None else None,
                time_to_first_byte_ms=None if first_byte_at is None else (first_byte_at - outcome.started) * 1000,
                duration_ms=(now - outcome.started) * 1000,
                failovers=outcome.failovers,
            )
            if self._record_write is not None:
                with contextlib.suppress(Exception):  # if it failed, settlement writes the record
                    await self._record_write
            try:
                outcome.cost_usd = await quota_call(
                    gateway.quota, gateway.settle, self.reservation, target, usage, settlement, self.price_modifiers
                )
            except Exception:
                outcome.error = "settlement failed; the reservation stays charged"
                outcome.settlement_failed = True
                log_warning(
                    "settlement failed",
                    request_id=outcome.request_id,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                )
            outcome.finished_at = gateway.clock()
            gateway.on_finished(outcome)
