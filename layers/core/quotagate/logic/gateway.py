"""The request path of the proxy, free of any web framework:
validate → authorize the model and route it → reserve quota → call upstream (with failover) →
meter → settle (exactly once). Admission and settlement are :mod:`quotagate.logic.admission`, the
failover loop is :mod:`quotagate.logic.failover`: every endpoint (chat completions here, embeddings,
the Responses and Messages protocols) runs through those same units.

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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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
from quotagate.logic.admission import Admission, Admitted, ReservationSize, Route
from quotagate.logic.assemble import CompletionAssembler
from quotagate.logic.auth import secret_still_accepted
from quotagate.logic.breaker import CircuitBreaker, Permit
from quotagate.logic.chat_request import ChatRequest, parse_chat_request
from quotagate.logic.failover import (
    DEADLINE_MESSAGE,
    DEFAULT_MAX_RETRY_WAIT,
    INTERNAL_ERROR_MESSAGE,
    Failover,
    log_gateway_fault,
    log_warning,
    provider_for,
)
from quotagate.logic.metering import Meter, Usage
from quotagate.logic.output_budget import OutputBudget, delta_tokens
from quotagate.providers.base import DONE_EVENT, ChatProvider, SSEEvent, StreamInterrupted
from quotagate.quota.reservation import Reservation, ReservationRequest
from quotagate.usage.record import Settlement, UsageOutcome, outcome_for_status

KEEPALIVE = b": ping\n\n"
TARGET_HEADER = "x-quotagate-target"

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
        self.quota = quota
        self.providers = providers
        self.keepalive_seconds = keepalive_seconds
        self.max_body_bytes = max_body_bytes
        self.on_finished = on_finished or (lambda outcome: None)
        self.router = router or routing.Router()
        # Without a shared store, circuits are per process (tests, tools).
        self.breaker = breaker or CircuitBreaker(InMemoryCircuitStore(), lambda: self._config().circuit_breaker)
        self.clock = clock
        self.sleep = sleep
        self.max_retry_wait = max_retry_wait
        self.max_request_seconds = max_request_seconds
        self.wall_clock = wall_clock  # epoch seconds: key expiry and rotation grace
        self.admission = Admission(self)  # identity -> limits -> route -> reserve, for every endpoint

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
        route = await self.admission.route(identity, request.model, request_id, started)
        plan, size = await self._chat_reservation(request, route)
        admitted = await self.admission.reserve(route, size)
        response = ChatResponse(self, request, admitted, plan)
        try:
            await response.start()
            if not request.stream:
                await response.collect()
        except BaseException as error:
            await admitted.remaining_read_done()
            await response.finish(error.status if isinstance(error, GatewayError) else 500)
            if isinstance(error, GatewayError):
                error.headers = {**response.headers, **error.headers}
            raise
        await admitted.remaining_read_done()
        return response

    async def _chat_reservation(
        self, request: ChatRequest, route: Route
    ) -> tuple[estimate.OutputPlan, ReservationSize]:
        """The output plan of a chat request and what it reserves: its prompt on the dearest
        target and room for its output (the 429 explains the output part in the client's terms)."""
        config = self._config()
        limits = route.limits
        cost = await to_thread.run_sync(estimate.measure, request.body)
        plan = estimate.plan_output(
            config,
            request,
            route.resolution.targets,
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
        size = ReservationSize(plan.prompt_reserve, plan.output_reserve, plan.reserve_usd, output_text, output_param)
        return plan, size

    def start_remaining_read(self, reservation: Reservation) -> asyncio.Future[None]:
        return asyncio.ensure_future(to_thread.run_sync(self.quota.read_remaining, reservation))

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

    def settle(
        self, reservation: Reservation, target: Target | None, usage: Usage, settlement: Settlement | None = None
    ) -> float:
        """Settle a reservation at ``target``'s price (blocking: the quota store); the cost."""
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
        self.quota.settle(reservation, usage.prompt_tokens, usage.completion_tokens, cost, **extra)
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


class ChatResponse:
    """One admitted chat request: its upstream call (with failover), its body for the client, and
    its settlement."""

    def __init__(self, gateway: Gateway, request: ChatRequest, admitted: Admitted, plan: estimate.OutputPlan) -> None:
        self._gateway = gateway
        self.request = request
        self.admitted = admitted
        self.resolution = admitted.route.resolution
        self._plan = plan
        self.outcome = admitted.outcome
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
        self._pending: asyncio.Future[SSEEvent] | None = None  # the next upstream event, awaited
        self._last_event_at = 0.0
        self._failover: Failover | None = None

    @property
    def headers(self) -> dict[str, str]:
        return self.admitted.headers(self.target)

    @property
    def json(self) -> dict[str, Any] | None:
        return self._json

    def _failover_loop(self) -> Failover:
        assert self._failover is not None
        return self._failover

    def _remaining(self) -> float:
        return self.admitted.deadline.remaining()

    # -- the upstream call, with failover -----------------------------------------------------
    async def start(self) -> None:
        """Try the targets in order (:class:`quotagate.logic.failover.Failover`) until one sends its
        first data event; the response is then committed to that target."""
        self._failover = self.admitted.failover()
        served = await self._failover.run(self.admitted.route.order, self._attempt)
        target = served.target
        self._events, self._first = served.result
        self._upstream_started = True
        self.outcome.first_byte_at = self._gateway.clock()
        self._permit = Permit(target.id)  # later (mid-stream) failures are plain failures
        self.target = target
        # If the provider reports no usage, the prompt is charged at its (upper bound) estimate.
        self._meter.prompt_estimate = self._plan.prompts[target.id]
        self.outcome.target = target.id
        factor = self._gateway.config.providers[target.provider].prompt_token_factor
        # Everything reserved beyond this target's prompt is room for its output.
        plan = self._plan
        room = plan.prompt_reserve + plan.output_reserve - plan.prompts[target.id]
        self._budget = OutputBudget(
            room, plan.ceilings[target.id], plan.slice * self.request.choices, factor, self._top_up
        )

    async def _attempt(self, target: Target) -> tuple[AsyncIterator[SSEEvent], SSEEvent]:
        """Call one target up to its first data event (the stream and that event). Raises what
        :meth:`Failover.within_first_byte` raises."""
        gateway = self._gateway
        body = _upstream_body(self.request, target, self._plan, gateway.config)
        events = provider_for(gateway.providers, target).stream(body)
        try:
            first = await self._failover_loop().within_first_byte(target, _first_data_event(events))
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
                await events.aclose()
            raise
        return events, first

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
            grown = await to_thread.run_sync(self._gateway.quota.top_up, self.admitted.reservation, tokens, extra_usd)
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
        return [*events, DONE_EVENT]

    async def _items(self) -> AsyncIterator[SSEEvent | bytes]:
        """Events to forward (metered, in order) and the gateway's own bytes (keep-alives, errors)."""
        assert self._events is not None and self._first is not None
        event: SSEEvent | None = self._first
        self._last_event_at = self._gateway.clock()
        try:
            while True:
                if event is not None:
                    items, stop = await self._consume(event)
                    for item in items:
                        yield item
                    if stop:
                        return
                event, items, stop = await self._next_event(self._events)
                for item in items:
                    yield item
                if stop:
                    return
        finally:
            with anyio.CancelScope(shield=True):
                pending, self._pending = self._pending, None
                if pending is not None:
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        await pending
                with contextlib.suppress(BaseException):
                    await self._events.aclose()  # type: ignore[attr-defined]

    async def _consume(self, event: SSEEvent) -> tuple[list[SSEEvent | bytes], bool]:
        """One upstream event: what to forward, and whether the stream ends with it."""
        assert self.target is not None and self._budget is not None
        if event.done:
            return [event], True
        data = event.data
        if data is not None and "error" in data:
            # The upstream's own error event: its text is for the operator's log, never for the
            # client (like an upstream error body before the first byte).
            redaction.log_upstream_error(self.target.provider, "stream", data.get("error"))
            message = f"Upstream provider '{self.target.provider}' reported an error while streaming the answer."
            return [await self._stream_failed("upstream error event mid-stream", message, "upstream_error")], True
        if data is not None:
            needed = delta_tokens(data)
            if needed and not await self._budget.admit(needed):
                # The budget is spent (or the cap reached): stop the upstream, end cleanly.
                self.outcome.cut_by_budget = True
                return list(self._cut_events()), True
            self._answer.feed(data)
        return ([event] if self._meter.observe_chunk(event, self.request.client_wants_usage) else []), False

    async def _next_event(
        self, events: AsyncIterator[SSEEvent]
    ) -> tuple[SSEEvent | None, list[SSEEvent | bytes], bool]:
        """The next upstream event within the keep-alive interval, the idle timeout and the deadline:
        (the event or None, bytes to send meanwhile, whether the stream ends)."""
        gateway = self._gateway
        if self._pending is None:
            self._pending = asyncio.ensure_future(events.__anext__())
        idle = self._idle_timeout()
        wait = min(gateway.keepalive_seconds, self._last_event_at + idle - gateway.clock(), self._remaining())
        done, _ = await asyncio.wait({self._pending}, timeout=max(wait, 0.0))
        if not done:
            items, stop = await self._silence(idle)
            return None, items, stop
        task, self._pending = self._pending, None
        try:
            event = task.result()
        except StopAsyncIteration:
            ended = "upstream stream ended without [DONE]"
            return None, [await self._stream_failed(ended, "The upstream provider ended the stream early.")], True
        except StreamInterrupted as error:
            return None, [await self._stream_failed(str(error), str(error))], True
        except Exception as error:  # an adapter bug must still end the stream visibly
            return None, [self._gateway_fault(error)], True
        self._last_event_at = gateway.clock()
        return event, [], False

    def _idle_timeout(self) -> float:
        assert self.target is not None
        return self._gateway.config.timeouts_for(self.target).idle

    async def _silence(self, idle: float) -> tuple[list[SSEEvent | bytes], bool]:
        """The upstream said nothing for a while: a keep-alive, or the end (deadline, idle timeout)."""
        assert self.target is not None
        if self._remaining() <= 0:
            self.outcome.error = "deadline exceeded"
            self._stream_ended = UsageOutcome.TIMEOUT
            return [self._fail(DEADLINE_MESSAGE, "deadline_exceeded", "timeout", 504)], True
        if self._gateway.clock() - self._last_event_at >= idle:
            message = f"Upstream provider '{self.target.provider}' sent nothing for {idle:g}s."
            self._stream_ended = UsageOutcome.TIMEOUT
            self.outcome.error = "upstream idle timeout"
            await self._record_stream_failure()
            return [self._fail(message, "upstream_timeout", "timeout", 504)], True
        return [KEEPALIVE], False

    async def _stream_failed(self, error: str, message: str, code: str = "upstream_stream_interrupted") -> bytes:
        """The target failed after its first byte: its circuit hears it, the client gets an error event."""
        self.outcome.error = error
        self._stream_ended = UsageOutcome.ERROR_EVENT
        await self._record_stream_failure()
        return self._fail(message, code)

    def _gateway_fault(self, error: Exception) -> bytes:
        # ...the gateway's fault, not the target's: its circuit is not told.
        assert self.target is not None
        self.outcome.error = f"{type(error).__name__} while streaming"
        log_gateway_fault(
            "gateway error while streaming", error, request_id=self.outcome.request_id, target=self.target.id
        )
        self._stream_ended = UsageOutcome.ERROR_EVENT
        return self._fail(INTERNAL_ERROR_MESSAGE, "internal_error", status=500)

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
            self._note_overrun(usage)
            status = client_status if client_status is not None else self.outcome.status
            await self.admitted.settle(self.target, usage, self._ended(status), status)

    def _note_overrun(self, usage: Usage) -> None:
        reserved = self.outcome.reserved_tokens
        if reserved and usage.total_tokens > reserved:
            # Settled at the truth all the same; a provider that bills past its cap, or a
            # tokenizer the safety factor underestimates, shows up here.
            self.outcome.overrun_tokens = usage.total_tokens - reserved
            log_warning(
                "usage above the reservation",
                request_id=self.outcome.request_id,
                target=self.outcome.target,
                reserved_tokens=reserved,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )

    def _ended(self, status: int) -> UsageOutcome:
        """How the request ended, for its usage record."""
        if status >= 400 or self._json is not None or not self.request.stream:
            return outcome_for_status(status)
        if self._stream_ended is not None:
            return self._stream_ended
        if not self._body_completed:
            return UsageOutcome.CLIENT_DISCONNECT
        return UsageOutcome.OK


async def _first_data_event(events: AsyncIterator[SSEEvent]) -> SSEEvent:
    """Comments (upstream keep-alives) before the first data event are dropped: until a data event
    arrives nothing has been sent, and the target can still be replaced."""
    while True:
        event = await events.__anext__()
        if event.data is not None or event.done:
            return event


def _for_client(event: SSEEvent, client_wants_usage: bool) -> bytes:
    """The event's bytes for the client: the ``"usage": null`` that every chunk carries because
    the gateway asked the upstream for usage is removed when the client did not ask for it."""
    if client_wants_usage or event.data is None or "usage" not in event.data:
        return event.raw
    return SSEEvent.from_chunk({k: v for k, v in event.data.items() if k != "usage"}).raw


def _error_event(message: str, code: str, error_type: str = "api_error") -> bytes:
    error = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return b"data: " + json.dumps(error).encode() + b"\n\n"
