"""The request path of the proxy, free of any web framework:
validate → authorize the model and route it → reserve quota → call upstream (with failover) →
meter → settle (exactly once).

Routing (see :mod:`quotagate.logic.router`): the requested name resolves to an alias and the
targets this plan may use; the router orders them (weighted or sticky pick, then failover order,
open circuits skipped). The reservation uses the highest price among those targets, so it is an
upper bound whichever target serves; settlement uses the price of the target that served.

Failover: a target that fails *before the first byte reaches the client* — connection refused or
reset, connect/first-byte timeout, HTTP 429, 5xx (and 401/403/404 from the upstream, which are
gateway configuration problems, mapped to 502 by the adapters) — is recorded as a failure on its
circuit and the next target is tried. Client errors (400, 413, 422...) are returned as they are:
another target would refuse them too (a target that cannot express the request at all,
``unsupported_for_provider``/``unsupported_for_model``, is skipped without counting against it).
When no target is left, a target that answered with ``Retry-After`` is tried again after that
wait, if the wait fits the remaining time budget (never sleeping past the deadline; at most
``max_retry_wait`` seconds per wait and ``MAX_RETRY_ROUNDS`` waits). A stream commits to its
target at the first data event; after that, failures end the stream with an OpenAI-style error
event (never a silent truncation).

Timeouts per target: ``connect``, ``first_byte`` (request sent → first streamed event; for a
non-streamed request, the whole answer) and ``idle`` (longest silence between streamed events);
per alias, ``deadline``: the total seconds for the whole request, failovers, waits and stream
included.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio
from anyio import to_thread

from quotagate import redaction, settings
from quotagate.auth_types import AuthType, KeyStatus
from quotagate.config import GatewayConfig, Plan, Target
from quotagate.dal.circuit_store import InMemoryCircuitStore
from quotagate.dal.keys_store import KeyRecord
from quotagate.dal.tenants_store import TenantRecord
from quotagate.errors import GatewayError, authentication_error, not_found, permission_error
from quotagate.identity import Identity
from quotagate.logic import estimate
from quotagate.logic import router as routing
from quotagate.logic.assemble import CompletionAssembler
from quotagate.logic.auth import secret_still_accepted
from quotagate.logic.breaker import CircuitBreaker, Permit
from quotagate.logic.chat_request import ChatRequest, parse_chat_request
from quotagate.logic.metering import Meter, Usage
from quotagate.logic.output_budget import OutputBudget, delta_tokens
from quotagate.providers.base import (
    DONE_EVENT,
    ChatProvider,
    SSEEvent,
    StreamInterrupted,
    UpstreamError,
    UpstreamTimeout,
)
from quotagate.quota.reservation import Reservation, ReservationRequest
from quotagate.usage.record import Settlement, UsageOutcome, outcome_for_status, source_of

KEEPALIVE = b": ping\n\n"
TARGET_HEADER = "x-quotagate-target"
MAX_RETRY_ROUNDS = 2  # Retry-After waits per request, once every target has failed
DEFAULT_MAX_RETRY_WAIT = 20.0  # seconds; longer Retry-After hints are passed on to the client
# A target that cannot express the request (features the provider lacks): try the next one.
UNSUPPORTED_CODES = frozenset({"unsupported_for_provider", "unsupported_for_model"})
# The gateway's own setup for a provider (its credentials, its region): try the next target, but
# the target did nothing wrong, so its circuit is not told.
GATEWAY_SIDE_CODES = frozenset({"provider_credentials_unavailable", "provider_misconfigured"})

T = TypeVar("T")


def _log_warning(message: str, **fields: Any) -> None:
    """A structured warning through the proxy's Powertools logger (imported on first use)."""
    try:
        from quotagate.observability import logger
    except ImportError:  # pragma: no cover - Powertools is a runtime dependency
        logging.getLogger("quotagate.gateway").warning("%s %s", message, fields)
        return
    logger.warning(message, extra=fields)


def _log_gateway_fault(message: str, error: BaseException, **fields: Any) -> None:
    """An error of the gateway's own code, with its traceback (it is our bug, not the target's)."""
    try:
        from quotagate.observability import logger
    except ImportError:  # pragma: no cover - Powertools is a runtime dependency
        logging.getLogger("quotagate.gateway").error("%s %s", message, fields, exc_info=error)
        return
    logger.error(message, exc_info=error, extra={**fields, "error_type": type(error).__name__})


# The proxy Lambda's timeout is 15 minutes (API Gateway streams last at most that long): stop a
# little earlier, so settlement always runs inside the invocation.
DEFAULT_MAX_REQUEST_SECONDS = settings.DEFAULT_MAX_REQUEST_SECONDS


class ProviderFactory(Protocol):
    def for_target(self, target: Target) -> ChatProvider: ...


class KeyRecords(Protocol):
    def get(self, key_id: str) -> KeyRecord | None: ...

    def get_fresh(self, key_id: str) -> KeyRecord | None: ...


class TenantRecords(Protocol):
    def get(self, tenant: str) -> TenantRecord | None: ...


class Quota(Protocol):
    def reserve(self, request: ReservationRequest) -> Reservation: ...

    def settle(
        self,
        reservation: Reservation,
        prompt_tokens: int,
        completion_tokens: int,
        actual_usd: float,
        settlement: Settlement | None = None,
        cache_tokens: dict[str, int] | None = None,
    ) -> bool: ...

    def top_up(self, reservation: Reservation, extra_tokens: int, extra_usd: float) -> bool:
        """Grow an open reservation in the same windows; False when a window has no room."""
        ...

    def read_remaining(self, reservation: Reservation) -> None:
        """Fill in the ``used`` of the reservation's windows (for ``x-ratelimit-remaining-*``)."""
        ...


@dataclass
class Outcome:
    """What happened to one request, for logs and metrics."""

    request_id: str
    identity: Identity
    model: str  # the alias that served (after any downgrade)
    status: int = 200
    usage: Usage | None = None
    cost_usd: float = 0.0
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    requested_model: str | None = None
    target: str | None = None  # <provider>/<upstream model> that served, if any
    attempts: list[str] = field(default_factory=list)  # "<target>: <what happened>" per failed attempt
    # For metrics (quotagate.observability), on the gateway's clock like ``started``.
    upstream_called_at: float | None = None  # the first upstream call began (gateway overhead)
    first_byte_at: float | None = None  # the serving target's first byte arrived
    finished_at: float | None = None  # settled
    reserved_tokens: int = 0
    reserved_usd: float = 0.0
    settlement_failed: bool = False
    overrun_tokens: int = 0  # settled usage above everything reserved (top-ups included)
    cut_by_budget: bool = False  # the gateway ended the answer with "length": the budget was spent
    top_ups: int = 0

    @property
    def failovers(self) -> int:
        """Targets that were tried and failed (skipped open circuits are not failovers)."""
        return sum(1 for attempt in self.attempts if not attempt.endswith("(circuit open)"))


def usage_fields(identity: Identity, requested_model: str, model: str) -> dict[str, str]:
    """Who asked for what: the part of the usage record known before the upstream call."""
    return {
        "tenant": identity.tenant,
        "consumer": identity.consumer,
        "key_id": identity.key_id,
        "auth_type": identity.auth_type,
        "plan": identity.plan,
        "requested_model": requested_model,
        "model": model,
    }


@dataclass
class Limits:
    plan: Plan
    key_limits: dict[str, float]
    allowed_models: list[str] | None
    # The tenant's record, or the config's default_tenant_limits when it has none: the same for
    # every key and JWT of the tenant, whatever their plans.
    tenant_limits: dict[str, float] = field(default_factory=dict)


class Gateway:
    def __init__(
        self,
        config: Callable[[], GatewayConfig],
        key_records: KeyRecords,
        quota: Quota,
        providers: ProviderFactory,
        keepalive_seconds: float = 15.0,
        max_body_bytes: int = 4 * 1024 * 1024,
        on_finished: Callable[[Outcome], None] | None = None,
        router: routing.Router | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        max_request_seconds: float | None = DEFAULT_MAX_REQUEST_SECONDS,
        tenant_records: TenantRecords | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._key_records = key_records
        self._tenant_records = tenant_records
        self._quota = quota
        self._providers = providers
        self.keepalive_seconds = keepalive_seconds
        self.max_body_bytes = max_body_bytes
        self._on_finished = on_finished or (lambda outcome: None)
        self.router = router or routing.Router()
        # Without a shared store, circuits are per process (tests, tools).
        self.breaker = breaker or CircuitBreaker(InMemoryCircuitStore(), lambda: self._config().circuit_breaker)
        self.clock = clock
        self.sleep = sleep
        self.max_retry_wait = max_retry_wait
        self.max_request_seconds = max_request_seconds
        self.wall_clock = wall_clock  # epoch seconds: key expiry and rotation grace

    @property
    def config(self) -> GatewayConfig:
        """The configuration in force (for endpoints that estimate without reserving)."""
        return self._config()

    # -- who may call what -------------------------------------------------------------------
    def limits_for(self, identity: Identity) -> Limits:
        config = self._config()
        plan_name, key_limits, allowed = identity.plan, None, None
        if identity.expires_at is not None and identity.expires_at <= self.wall_clock():
            raise authentication_error("This token has expired.")  # an Allow cached past the token's exp
        if identity.auth_type == AuthType.API_KEY:
            now = self.wall_clock()
            record = self._key_records.get(identity.key_id)
            if record is not None and not secret_still_accepted(record, identity.secret_fingerprint, now):
                # Our copy may predate a rotation the authorizer has already seen: read it again.
                record = self._key_records.get_fresh(identity.key_id)
            if (
                record is None
                or record.status != KeyStatus.ACTIVE
                or (record.expires_at is not None and record.expires_at <= now)
                or (not secret_still_accepted(record, identity.secret_fingerprint, now))
            ):
                raise authentication_error("This API key is no longer valid.")
            plan_name, key_limits, allowed = record.plan, record.limits, record.allowed_models
        plan = config.plan(plan_name)
        if plan is None:
            raise permission_error(f"Plan '{plan_name}' is not configured on this gateway.", "unknown_plan")
        tenant = self._tenant_records.get(identity.tenant) if self._tenant_records and identity.tenant else None
        tenant_limits = dict(tenant.limits) if tenant is not None else dict(config.default_tenant_limits)
        return Limits(plan, {**plan.limits, **(key_limits or {})}, allowed, tenant_limits)

    def model_listing(self, limits: Limits) -> list[dict[str, Any]]:
        """The model objects of every name this plan and key may call (GET /v1/models)."""
        config = self._config()
        return [
            _model_card(config, resolution)
            for resolution in routing.callable_models(config, limits.plan, limits.allowed_models)
        ]

    def model_card(self, name: str, limits: Limits) -> dict[str, Any]:
        """One model object (GET /v1/models/{id}); 404 for a name this key may not call, so the
        answer never reveals which models exist beyond the key's reach."""
        config = self._config()
        try:
            resolution = routing.resolve(config, name, limits.plan, limits.allowed_models)
        except GatewayError:
            raise not_found(
                f"The model '{name}' does not exist or you do not have access to it.", "model_not_found", "model"
            ) from None
        return _model_card(config, resolution)

    def resolve(self, name: str, limits: Limits) -> routing.Resolution:
        return routing.resolve(self._config(), name, limits.plan, limits.allowed_models)

    # -- chat completions --------------------------------------------------------------------
    async def chat(self, identity: Identity, raw_body: bytes, request_id: str) -> ChatResponse:
        """Validate, route, reserve and start the upstream call (failing over as needed). Raises
        GatewayError (nothing reserved, or the reservation already settled) for anything the
        client must see as an error status."""
        started = self.clock()
        request = parse_chat_request(raw_body, self.max_body_bytes)
        limits = await to_thread.run_sync(self.limits_for, identity)
        resolution = self.resolve(request.model, limits)
        # The alias's deadline, capped so that the gateway always ends a request — and settles its
        # quota — before the Lambda timeout would kill it mid-stream and strand the reservation.
        limits_in_force = [d for d in (resolution.model.deadline, self.max_request_seconds) if d is not None]
        deadline_at = started + min(limits_in_force) if limits_in_force else None

        target_ids = [t.id for t in resolution.targets]
        views = self.breaker.cached_views(target_ids)  # no I/O while this container's copy is fresh
        if views is None:
            views = await to_thread.run_sync(self.breaker.views, target_ids)
        order = self.router.order(
            resolution, f"{identity.tenant}/{identity.consumer}", {t: v.state for t, v in views.items()}
        )
        if not order:
            # Every circuit is open: fail fast, before anything is reserved.
            reopen = min(v.open_until for v in views.values()) - self.breaker.now()
            raise GatewayError(
                503,
                f"No upstream for the model '{request.model}' is available right now.",
                "api_error",
                "upstream_unavailable",
                headers={"retry-after": str(max(1, math.ceil(reopen)))},
            )

        config = self._config()
        cost = await to_thread.run_sync(estimate.measure, request.body)
        plan = estimate.plan_output(
            config,
            request,
            resolution.targets,
            cost,
            limits.key_limits,
            limits.tenant_limits,
            limits.plan.default_max_tokens,
        )
        per_choice = plan.output_reserve // request.choices
        if request.max_output_tokens is not None:
            output_param = request.cap_param
            output_text = f"{output_param} {per_choice}"
        else:
            output_param = "max_tokens"
            output_text = f"the default of {per_choice} output tokens"
        if request.choices > 1:
            output_text = f"n={request.choices} x {output_text} = {plan.output_reserve} output tokens"
        reservation = await to_thread.run_sync(
            lambda: self._quota.reserve(
                ReservationRequest(
                    request_id,
                    identity.key_id,
                    identity.tenant,
                    limits.key_limits,
                    limits.tenant_limits,
                    plan.prompt_reserve,
                    plan.output_reserve,
                    plan.reserve_usd,
                    output_text=output_text,
                    output_param=output_param,
                    usage_fields=usage_fields(identity, request.model, resolution.model.name),
                )
            )
        )
        # The remaining-quota read for the x-ratelimit-* headers overlaps the upstream call: the
        # reservation is the only store round trip before the first byte.
        remaining = self.start_remaining_read(reservation)
        outcome = Outcome(
            request_id,
            identity,
            resolution.model.name,
            requested_model=request.model,
            reserved_tokens=plan.prompt_reserve + plan.output_reserve,
            reserved_usd=plan.reserve_usd,
        )
        outcome.started = started
        response = ChatResponse(self, request, resolution, order, plan, reservation, outcome, deadline_at)
        try:
            await response.start()
            if not request.stream:
                await response.collect()
        except BaseException as error:
            await self.finish_remaining_read(remaining)
            await response.finish(error.status if isinstance(error, GatewayError) else 500)
            if isinstance(error, GatewayError):
                error.headers = {**response.headers, **error.headers}
            raise
        await self.finish_remaining_read(remaining)  # done long ago, unless the store is slow
        return response

    def start_remaining_read(self, reservation: Reservation) -> asyncio.Future[None]:
        return asyncio.ensure_future(to_thread.run_sync(self._quota.read_remaining, reservation))

    @staticmethod
    async def finish_remaining_read(task: asyncio.Future[None] | None) -> None:
        """Wait for the read started by ``start_remaining_read``; a failure only loses header values."""
        if task is None:
            return
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await task

    async def embeddings(
        self, identity: Identity, raw_body: bytes, request_id: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        from quotagate.logic.embeddings import run_embeddings

        return await run_embeddings(self, identity, raw_body, request_id)

    def _settle(
        self, reservation: Reservation, target: Target | None, usage: Usage, settlement: Settlement | None = None
    ) -> float:
        if target is None:
            cost = 0.0
        elif self._config().providers[target.provider].type == "anthropic":
            # Prompt-cache writes and reads have their own prices (other providers: list price).
            cost = target.price.cost_usd(
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cache_read_tokens,
                usage.cache_creation_tokens,
                usage.cache_creation_1h_tokens,
            )
        else:
            cost = target.price.cost_usd(usage.prompt_tokens, usage.completion_tokens)
        extra: dict[str, Any] = {}
        if settlement is not None:
            extra["settlement"] = settlement
        cache = {
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_creation_tokens": usage.cache_creation_tokens,
            "cache_creation_1h_tokens": usage.cache_creation_1h_tokens,
        }
        if any(cache.values()):
            extra["cache_tokens"] = cache
        self._quota.settle(reservation, usage.prompt_tokens, usage.completion_tokens, cost, **extra)
        return cost


# Shown as ``created`` for models whose configuration does not set one.
PROCESS_STARTED = int(time.time())


def _model_card(config: GatewayConfig, resolution: routing.Resolution) -> dict[str, Any]:
    providers = {t.provider for t in resolution.targets}
    created = config.models[resolution.requested].created
    return {
        "id": resolution.requested,
        "object": "model",
        "created": created if created is not None else PROCESS_STARTED,
        "owned_by": next(iter(providers)) if len(providers) == 1 else "quotagate",
    }


def _upstream_body(
    request: ChatRequest, target: Target, plan: estimate.OutputPlan, config: GatewayConfig
) -> dict[str, Any]:
    body = copy.copy(request.body)
    body["model"] = target.upstream_model
    # Exactly one output cap, in the field this target understands.
    body.pop("max_tokens", None)
    body.pop("max_completion_tokens", None)
    body[config.max_output_field(target)] = plan.caps[target.id]
    # Always streamed, so that the gateway meters the output as it arrives (and can stop it); a
    # client that asked for JSON gets the answer assembled by the gateway.
    body["stream"] = True
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


class _GatewayFault(Exception):
    """The gateway's own code failed during an attempt (serialising the body, an adapter or a
    translation bug): the target did nothing wrong, so its circuit gets no verdict."""


INTERNAL_ERROR_MESSAGE = "The gateway had an internal error."


class _AttemptFailed(Exception):
    """A target failed before anything reached the client: try the next one."""

    def __init__(self, error: UpstreamError, count_against_target: bool = True) -> None:
        super().__init__(error.message)
        self.error = error
        self.count_against_target = count_against_target


async def _bounded(awaitable: Awaitable[T], timeout: float) -> T:
    """``awaitable`` within ``timeout`` seconds, else asyncio.TimeoutError. The awaitable runs as
    its own task and is cancelled (edge-triggered) so its clean-up can still await."""
    task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(timeout, 0.0))
    except BaseException:
        task.cancel()
        with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
            await task
        raise
    if not done:
        task.cancel()
        with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
            await task
        raise TimeoutError
    return task.result()


class ChatResponse:
    """One admitted request: its upstream call (with failover), its body for the client, and its
    settlement."""

    def __init__(
        self,
        gateway: Gateway,
        request: ChatRequest,
        resolution: routing.Resolution,
        order: list[Target],
        plan: estimate.OutputPlan,
        reservation: Reservation,
        outcome: Outcome,
        deadline_at: float | None,
    ) -> None:
        self._gateway = gateway
        self.request = request
        self.resolution = resolution
        self._order = order
        self._plan = plan
        self._reservation = reservation
        self.outcome = outcome
        self._deadline_at = deadline_at
        self._meter = Meter(request.messages)
        self._upstream_started = False
        self._finished = False
        self._json: dict[str, Any] | None = None
        self._events: AsyncIterator[SSEEvent] | None = None
        self._first: SSEEvent | None = None
        self._budget: OutputBudget | None = None
        self._answer = CompletionAssembler()
        self._stream_error: GatewayError | None = None  # how a stream ended badly (for JSON clients)
        self.target: Target | None = None  # the target that served
        self._permit: Permit | None = None
        # For the usage record: how a stream ended.
        self._stream_ended: UsageOutcome | None = None  # set when the stream ended with an error event
        self._body_completed = False

    @property
    def headers(self) -> dict[str, str]:
        headers = self._reservation.headers()
        headers["x-quotagate-request-id"] = self.outcome.request_id
        headers["x-quotagate-model"] = self.resolution.model.name
        if self.target is not None:
            headers[TARGET_HEADER] = self.target.id
        return headers

    @property
    def json(self) -> dict[str, Any] | None:
        return self._json

    # -- time --------------------------------------------------------------------------------
    def _remaining(self) -> float:
        if self._deadline_at is None:
            return math.inf
        return self._deadline_at - self._gateway.clock()

    def _deadline_error(self) -> GatewayError:
        return GatewayError(
            504, "The request did not complete within the model's deadline.", "timeout", "deadline_exceeded"
        )

    # -- the upstream call, with failover -----------------------------------------------------
    async def start(self) -> None:  # noqa: C901 -- to split (issue 12)
        gateway = self._gateway
        breaker = gateway.breaker
        pending = list(self._order)
        retry_at: dict[str, float] = {}  # target id -> when its Retry-After allows another try
        last: UpstreamError | None = None
        rounds = 0
        while True:
            for target in pending:
                if self._remaining() <= 0:
                    last = None
                    break
                permit = breaker.allow_cached(target.id) or await to_thread.run_sync(breaker.allow, target.id)
                if permit is None:
                    self.outcome.attempts.append(f"{target.id}: skipped (circuit open)")
                    continue
                try:
                    await self._attempt(target)
                except _AttemptFailed as failed:
                    last = failed.error
                    self.outcome.attempts.append(f"{target.id}: {failed.error.status} {failed.error.code}")
                    _log_warning(
                        "upstream attempt failed",
                        request_id=self.outcome.request_id,
                        model=self.resolution.model.name,
                        target=target.id,
                        status=failed.error.status,
                        code=failed.error.code,
                    )
                    if failed.count_against_target:
                        await to_thread.run_sync(breaker.record_failure, permit)
                    if failed.error.retry_after is not None:
                        retry_at[target.id] = gateway.clock() + failed.error.retry_after
                    continue
                except UpstreamError as error:
                    # The target answered: the request itself is at fault, another target would agree.
                    if breaker.success_needs_write(permit):
                        await to_thread.run_sync(breaker.record_success, permit)
                    self.outcome.error = error.message
                    raise _client_error(error) from None
                except _GatewayFault:
                    # Our bug, not the target's: no verdict on its circuit (a probe's lease simply
                    # expires), no failover (the next target would meet the same bug), a logged 500.
                    self.outcome.error = "gateway internal error"
                    raise GatewayError(500, INTERNAL_ERROR_MESSAGE, "api_error", "internal_error") from None
                except BaseException:
                    # Cancelled (the client left) or an unexpected error: a probe that cannot report
                    # a verdict re-opens the circuit for a cool-down rather than hold its lease.
                    if permit.probe:
                        with anyio.CancelScope(shield=True):
                            await to_thread.run_sync(breaker.record_failure, permit)
                    raise
                if breaker.success_needs_write(permit):
                    await to_thread.run_sync(breaker.record_success, permit)
                self._permit = Permit(target.id)  # later (mid-stream) failures are plain failures
                self.target = target
                # If the provider reports no usage, the prompt is charged at its (upper bound) estimate.
                self._meter.prompt_estimate = self._plan.prompts[target.id]
                self.outcome.target = target.id
                factor = gateway._config().providers[target.provider].prompt_token_factor
                # Everything reserved beyond this target's prompt is room for its output.
                room = self._plan.prompt_reserve + self._plan.output_reserve - self._plan.prompts[target.id]
                self._budget = OutputBudget(
                    room, self._plan.ceilings[target.id], self._plan.slice * self.request.choices, factor, self._top_up
                )
                return
            # Nothing served. Wait for a Retry-After if it fits the budget, then try those again.
            if retry_at and rounds < MAX_RETRY_ROUNDS and self._remaining() > 0:
                soonest = min(retry_at.values())
                wait = max(0.0, soonest - gateway.clock())
                if wait <= gateway.max_retry_wait and wait < self._remaining():
                    rounds += 1
                    await gateway.sleep(wait)
                    now = gateway.clock()
                    pending = [t for t in self._order if retry_at.get(t.id, math.inf) <= now]
                    for t in pending:
                        retry_at.pop(t.id, None)
                    continue
            break
        if last is None:
            if self._remaining() <= 0:
                self.outcome.error = "deadline exceeded"
                raise self._deadline_error()
            self.outcome.error = "no target available"
            raise GatewayError(
                503,
                f"No upstream for the model '{self.request.model}' is available right now.",
                "api_error",
                "upstream_unavailable",
                headers={"retry-after": "1"},
            )
        self.outcome.error = last.message
        raise _client_error(last)

    async def _attempt(self, target: Target) -> None:
        """Call one target up to its first byte. Raises _AttemptFailed (try the next target),
        UpstreamError (a client error), or returns with the response committed to this target."""
        gateway = self._gateway
        timeouts = gateway._config().timeouts_for(target)
        budget = min(timeouts.first_byte, self._remaining())
        cut_by_deadline = self._remaining() < timeouts.first_byte
        body = _upstream_body(self.request, target, self._plan, gateway._config())
        try:
            provider = gateway._providers.for_target(target)
        except GatewayError as error:  # the gateway's configuration, not the target's doing
            raise _AttemptFailed(
                UpstreamError(error.status, error.message, code=error.code), count_against_target=False
            ) from None
        first_byte_by = gateway.clock() + budget
        if self.outcome.upstream_called_at is None:
            self.outcome.upstream_called_at = gateway.clock()

        def timed_out() -> _AttemptFailed:
            if cut_by_deadline:
                err = UpstreamError(
                    504,
                    "The request did not complete within the model's deadline.",
                    error_type="timeout",
                    code="deadline_exceeded",
                )
                return _AttemptFailed(err)
            return _AttemptFailed(
                UpstreamTimeout(
                    f"Upstream provider '{target.provider}' did not answer within {timeouts.first_byte:g}s."
                )
            )

        events = provider.stream(body)
        try:
            while True:
                # Comments (upstream keep-alives) before the first data event are dropped: until a
                # data event arrives nothing has been sent, and the target can still be replaced.
                event = await _bounded(events.__anext__(), first_byte_by - gateway.clock())
                if event.data is not None or event.done:
                    break
        except BaseException as error:
            with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
                await events.aclose()  # type: ignore[attr-defined]
            if isinstance(error, asyncio.TimeoutError):
                raise timed_out() from None
            if isinstance(error, StopAsyncIteration):
                raise _AttemptFailed(
                    UpstreamError(
                        502,
                        f"Upstream provider '{target.provider}' closed the stream without sending anything.",
                        code="upstream_error",
                    )
                ) from None
            if isinstance(error, StreamInterrupted):
                raise _AttemptFailed(UpstreamError(502, str(error), code="upstream_stream_interrupted")) from None
            if isinstance(error, UpstreamError):
                raise _classify(error) from None
            if isinstance(error, GatewayError):
                raise _classify_gateway_error(error) from None
            if isinstance(error, Exception):
                raise _unexpected(target, error) from None
            raise
        self._events = events
        self._first = event
        self._upstream_started = True
        self.outcome.first_byte_at = gateway.clock()

    # -- the streamed body ----------------------------------------------------------------------
    async def body(self) -> AsyncIterator[bytes]:
        """The SSE bytes for the client (see :meth:`_stream_body`); notes whether the client took
        all of them (if not, it disconnected)."""
        async for chunk in self._stream_body():
            yield chunk
        self._body_completed = True

    async def _stream_body(self) -> AsyncIterator[bytes]:
        """The SSE bytes for the client, chunk by chunk, with keep-alive comments while the upstream
        is silent. Any upstream failure after the first byte ends the stream with an error event;
        an answer the budget cannot pay for ends with ``finish_reason: "length"``."""
        wants_usage = self.request.client_wants_usage
        async for item in self._items():
            yield _for_client(item, wants_usage) if isinstance(item, SSEEvent) else item

    async def collect(self) -> None:
        """For a client that asked for JSON: read the whole (metered) stream and assemble the answer.
        Raises GatewayError if the stream failed (the tokens it produced are still settled)."""
        async for _ in self._items():
            pass
        if self._stream_error is not None:
            raise self._stream_error
        assert self.target is not None
        self._json = self._answer.result(cut=self.outcome.cut_by_budget, fallback_model=self.target.upstream_model)

    async def _top_up(self, tokens: int) -> bool:
        assert self.target is not None
        extra_usd = self.target.price.cost_usd(0, tokens)
        grown = False
        with anyio.CancelScope(shield=True):  # a write in flight must land (or fail) before settlement
            grown = await to_thread.run_sync(self._gateway._quota.top_up, self._reservation, tokens, extra_usd)
        if grown:
            self.outcome.reserved_tokens += tokens
            self.outcome.reserved_usd += extra_usd
        return bool(grown)

    def _fail(self, message: str, code: str, error_type: str = "api_error", status: int = 502) -> bytes:
        self._stream_error = GatewayError(status, message, error_type, code)
        return _error_event(message, code, error_type)

    def _cut_events(self) -> list[SSEEvent]:
        """The end of an answer the budget cannot pay for: ``length`` on every unfinished choice,
        the usage chunk if the client asked for usage, then ``[DONE]``."""
        data = self._first.data if self._first is not None and self._first.data else {}
        head = {
            "id": data.get("id"),
            "object": "chat.completion.chunk",
            "created": data.get("created"),
            "model": data.get("model"),
        }
        events = [
            SSEEvent.from_chunk(
                {**head, "choices": [{"index": i, "delta": {}, "logprobs": None, "finish_reason": "length"}]}
            )
            for i in self._answer.unfinished_choices() or [0]
        ]
        if self.request.client_wants_usage:
            usage = self._meter.usage(True)
            events.append(
                SSEEvent.from_chunk(
                    {
                        **head,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": usage.prompt_tokens,
                            "completion_tokens": usage.completion_tokens,
                            "total_tokens": usage.total_tokens,
                        },
                    }
                )
            )
        return events

    async def _items(self) -> AsyncIterator[SSEEvent | bytes]:  # noqa: C901 -- to split (issue 12)
        """Events to forward (metered, in order) and the gateway's own bytes (keep-alives, errors)."""
        assert self._events is not None and self._first is not None and self.target is not None
        assert self._budget is not None
        gateway = self._gateway
        idle = gateway._config().timeouts_for(self.target).idle
        wants_usage = self.request.client_wants_usage
        budget = self._budget
        events = self._events
        pending: asyncio.Task[SSEEvent] | None = None
        event: SSEEvent | None = self._first
        finished_cleanly = False
        last_event_at = gateway.clock()
        try:
            while True:
                if event is not None:
                    if event.done:
                        finished_cleanly = True
                        yield event
                        break
                    if event.data is not None and "error" in event.data:
                        # The upstream's own error event: its text is for the operator's log, never
                        # for the client (like an upstream error body before the first byte).
                        redaction.log_upstream_error(self.target.provider, "stream", event.data.get("error"))
                        self.outcome.error = "upstream error event mid-stream"
                        self._stream_ended = UsageOutcome.ERROR_EVENT
                        await self._record_stream_failure()
                        yield self._fail(
                            f"Upstream provider '{self.target.provider}' reported an error while streaming the answer.",
                            "upstream_error",
                        )
                        return
                    if event.data is not None:
                        needed = delta_tokens(event.data)
                        if needed and not await budget.admit(needed):
                            # The budget is spent (or the cap reached): stop the upstream, end cleanly.
                            self.outcome.cut_by_budget = True
                            for cut in self._cut_events():
                                yield cut
                            yield DONE_EVENT
                            finished_cleanly = True
                            break
                        self._answer.feed(event.data)
                    if self._meter.observe_chunk(event, wants_usage):
                        yield event
                    event = None
                if pending is None:
                    pending = asyncio.ensure_future(events.__anext__())
                now = gateway.clock()
                idle_left = last_event_at + idle - now
                wait = min(gateway.keepalive_seconds, idle_left, self._remaining())
                done, _ = await asyncio.wait({pending}, timeout=max(wait, 0.0))
                if not done:
                    if self._remaining() <= 0:
                        self.outcome.error = "deadline exceeded"
                        self._stream_ended = UsageOutcome.TIMEOUT
                        yield self._fail(
                            "The request did not complete within the model's deadline.",
                            "deadline_exceeded",
                            "timeout",
                            504,
                        )
                        return
                    if gateway.clock() - last_event_at >= idle:
                        self.outcome.error = "upstream idle timeout"
                        self._stream_ended = UsageOutcome.TIMEOUT
                        await self._record_stream_failure()
                        yield self._fail(
                            f"Upstream provider '{self.target.provider}' sent nothing for {idle:g}s.",
                            "upstream_timeout",
                            "timeout",
                            504,
                        )
                        return
                    yield KEEPALIVE
                    continue
                task, pending = pending, None
                try:
                    event = task.result()
                except StopAsyncIteration:
                    break
                except StreamInterrupted as error:
                    self.outcome.error = str(error)
                    self._stream_ended = UsageOutcome.ERROR_EVENT
                    await self._record_stream_failure()
                    yield self._fail(str(error), "upstream_stream_interrupted")
                    return
                except Exception as error:  # an adapter bug must still end the stream visibly
                    # ...and it is the gateway's fault, not the target's: its circuit is not told.
                    self.outcome.error = f"{type(error).__name__} while streaming"
                    _log_gateway_fault(
                        "gateway error while streaming",
                        error,
                        request_id=self.outcome.request_id,
                        target=self.target.id,
                    )
                    self._stream_ended = UsageOutcome.ERROR_EVENT
                    yield self._fail(INTERNAL_ERROR_MESSAGE, "internal_error", status=500)
                    return
                last_event_at = gateway.clock()
            if not finished_cleanly:
                self.outcome.error = "upstream stream ended without [DONE]"
                self._stream_ended = UsageOutcome.ERROR_EVENT
                await self._record_stream_failure()
                yield self._fail("The upstream provider ended the stream early.", "upstream_stream_interrupted")
        finally:
            with anyio.CancelScope(shield=True):
                if pending is not None:
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        await pending
                with contextlib.suppress(BaseException):
                    await events.aclose()  # type: ignore[attr-defined]

    async def _record_stream_failure(self) -> None:
        if self._permit is not None:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(self._gateway.breaker.record_failure, self._permit)

    # -- settlement -------------------------------------------------------------------------------
    async def finish(self, client_status: int | None = None) -> None:
        """Settle the reservation with the actual usage of the target that served (nothing for
        targets that failed before producing output). Exactly once; survives cancellation."""
        if self._finished:
            return
        self._finished = True
        with anyio.CancelScope(shield=True):
            if self._events is not None:
                with contextlib.suppress(BaseException):
                    await self._events.aclose()  # type: ignore[attr-defined]
            if self._budget is not None:
                await self._budget.close()
                self.outcome.top_ups = self._budget.top_ups
            usage = self._meter.usage(self._upstream_started)
            self.outcome.usage = usage
            reserved = self.outcome.reserved_tokens
            if reserved and usage.total_tokens > reserved:
                # Settled at the truth all the same; a provider that bills past its cap, or a
                # tokenizer the safety factor underestimates, shows up here.
                self.outcome.overrun_tokens = usage.total_tokens - reserved
                _log_warning(
                    "usage above the reservation",
                    request_id=self.outcome.request_id,
                    target=self.outcome.target,
                    reserved_tokens=reserved,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                )
            if client_status is not None:
                self.outcome.status = client_status
            try:
                self.outcome.cost_usd = await to_thread.run_sync(
                    self._gateway._settle, self._reservation, self.target, usage, self._settlement(usage)
                )
            except Exception:
                # The quota store failed (after its own retries): the reservation stays charged,
                # which never lets a window overshoot. The client's answer is not thrown away.
                self.outcome.error = "settlement failed; the reservation stays charged"
                self.outcome.settlement_failed = True
                _log_warning(
                    "settlement failed",
                    request_id=self.outcome.request_id,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                )
            self.outcome.finished_at = self._gateway.clock()
            self._gateway._on_finished(self.outcome)

    def _settlement(self, usage: Usage) -> Settlement:
        """How the request ended, for its usage record."""
        status = self.outcome.status
        if status >= 400 or self._json is not None or not self.request.stream:
            outcome = outcome_for_status(status)
        elif self._stream_ended is not None:
            outcome = self._stream_ended
        elif not self._body_completed:
            outcome = UsageOutcome.CLIENT_DISCONNECT
        else:
            outcome = UsageOutcome.OK
        started, first_byte_at = self.outcome.started, self.outcome.first_byte_at
        now = self._gateway.clock()
        return Settlement(
            outcome=outcome,
            http_status=status,
            usage_source=source_of(usage.source),
            target=self.target.id if self.target is not None else None,
            time_to_first_byte_ms=None if first_byte_at is None else (first_byte_at - started) * 1000,
            duration_ms=(now - started) * 1000,
            failovers=self.outcome.failovers,
        )


def _classify(error: UpstreamError) -> Exception:
    """Before the first byte: which upstream errors move on to the next target."""
    if error.code in UNSUPPORTED_CODES or error.code in GATEWAY_SIDE_CODES:
        return _AttemptFailed(error, count_against_target=False)
    if error.status >= 500 or error.status in (408, 429):
        return _AttemptFailed(error)
    return error  # a client error: returned as it is


def _classify_gateway_error(error: GatewayError) -> Exception:
    # e.g. the gateway's credentials for this provider are unavailable (503): another target may
    # serve, but the target itself did nothing wrong, so its circuit is not told.
    if error.status >= 500:
        return _AttemptFailed(
            UpstreamError(error.status, error.message, error_type=error.type, code=error.code),
            count_against_target=False,
        )
    return error


def _unexpected(target: Target, error: Exception) -> _GatewayFault:
    """An exception that is not an upstream failure (adapters turn those into UpstreamError): the
    gateway's own code failed, e.g. a body httpx cannot serialise."""
    _log_gateway_fault("gateway error while calling an upstream", error, target=target.id)
    return _GatewayFault()


def _client_error(error: UpstreamError) -> GatewayError:
    headers = {"retry-after": str(max(1, math.ceil(error.retry_after)))} if error.retry_after else {}
    return GatewayError(error.status, error.message, error.error_type, error.code, headers=headers)


def _for_client(event: SSEEvent, client_wants_usage: bool) -> bytes:
    """The event's bytes for the client: the ``"usage": null`` that every chunk carries because
    the gateway asked the upstream for usage is removed when the client did not ask for it."""
    if client_wants_usage or event.data is None or "usage" not in event.data:
        return event.raw
    return SSEEvent.from_chunk({k: v for k, v in event.data.items() if k != "usage"}).raw


def _error_event(message: str, code: str, error_type: str = "api_error") -> bytes:
    error = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return b"data: " + json.dumps(error).encode() + b"\n\n"
