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
import copy
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from anyio import to_thread

from quotagate import settings, wire
from quotagate.auth_types import AuthType, KeyStatus
from quotagate.config import GatewayConfig, ProviderType, Target
from quotagate.dal.circuit_store import InMemoryCircuitStore
from quotagate.errors import GatewayError, authentication_error, invalid_request, permission_error
from quotagate.logic import estimate, pricing
from quotagate.logic import router as routing
from quotagate.logic.admission import Admission, Admitted, ReservationSize, Route
from quotagate.logic.assemble import CompletionAssembler
from quotagate.logic.auth import secret_still_accepted
from quotagate.logic.breaker import CircuitBreaker
from quotagate.logic.chat_request import ChatRequest, parse_chat_request
from quotagate.logic.exchange import Exchange, UpstreamTranslator
from quotagate.logic.failover import DEFAULT_MAX_RETRY_WAIT
from quotagate.logic.metering import Meter, Usage
from quotagate.logic.request_types import Limits
from quotagate.providers.base import DONE_EVENT, ChatProvider, SSEEvent
from quotagate.quota.windows import WindowUnit

if TYPE_CHECKING:
    from quotagate.identity import Identity
    from quotagate.logic.pricing import PriceModifiers
    from quotagate.logic.request_types import KeyRecords, Outcome, ProviderFactory, Quota, TenantRecords
    from quotagate.quota.reservation import Reservation
    from quotagate.usage.record import Settlement

KEEPALIVE = b": ping\n\n"
# A body up to this size is counted on the event loop (well under a millisecond of tiktoken); a
# larger one in a worker thread, so that one big prompt never stalls the other requests.
INLINE_ESTIMATE_BYTES = 8 * 1024
TARGET_HEADER = "x-quotagate-target"

# The proxy Lambda's timeout is 15 minutes (API Gateway streams last at most that long): stop a
# little earlier, so settlement always runs inside the invocation.
DEFAULT_MAX_REQUEST_SECONDS = settings.DEFAULT_MAX_REQUEST_SECONDS


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

    def refuses_unknown_fields(self, model: str) -> bool:
        """Whether the model (or alias) the client named is configured to refuse request fields
        the gateway does not declare (its ``unknown_fields``), rather than drop them."""
        from quotagate.config import UnknownFieldsPolicy

        entry = self._config().models.get(model)
        return entry is not None and entry.unknown_fields == UnknownFieldsPolicy.REFUSE

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

    def limits_at_hand(self, identity: Identity) -> bool:
        """Whether :meth:`limits_for` needs no store read: the key's record (with the secret the
        authorizer checked still accepted) and the tenant's record are cached. The request path then
        skips a worker thread."""
        if identity.auth_type == AuthType.API_KEY:
            record = self._key_records.peek(identity.key_id)
            if record is None or not secret_still_accepted(record, identity.secret_fingerprint, self.wall_clock()):
                return False
        return not (self._tenant_records and identity.tenant and not self._tenant_records.is_cached(identity.tenant))

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
        return _model_card(config, routing.resolve(config, name, limits.plan, limits.allowed_models))

    def resolve(self, name: str, limits: Limits) -> routing.Resolution:
        return routing.resolve(self._config(), name, limits.plan, limits.allowed_models)

    # -- chat completions --------------------------------------------------------------------
    async def chat(
        self,
        identity: Identity,
        raw_body: bytes,
        request_id: str,
        translate: Translate | None = None,
        cost: estimate.RequestCost | None = None,
    ) -> ChatResponse:
        """Validate, route, reserve and start the upstream call (failing over as needed). Raises
        GatewayError (nothing reserved, or the reservation already settled) for anything the
        client must see as an error status.

        ``translate`` builds the request's translator (default :class:`ChatTranslator`): an
        endpoint whose clients speak another protocol sends the chat body here for validation and
        the reservation, and chooses per target what is sent and how the stream is read; ``cost``
        is then what its request can cost on any target (an upper bound), if the chat body alone
        does not bound it (a body sent as it is to some targets)."""
        started = self.clock()
        request = parse_chat_request(raw_body, self.max_body_bytes, self.refuses_unknown_fields)
        route = await self.admission.route(identity, request.model, request_id, started)
        self._check_choices(request, route)
        if cost is None and len(raw_body) <= INLINE_ESTIMATE_BYTES:
            cost = estimate.measure(request.body)  # quicker than the hop to a worker thread
        elif cost is None:
            cost = await to_thread.run_sync(estimate.measure, request.body)  # never hold the event loop long
        plan, size = self._chat_reservation(request, route, cost)
        translator = (translate or ChatTranslator)(request, plan, self._config())  # before anything is reserved
        try:
            admitted = await self.admission.reserve(route, size)
        except GatewayError as refused:
            if not (plan.gateway_capped and _budget_refusal(refused)):
                raise
            # The budget is close: the cap the gateway chose becomes what the budget has room for.
            plan, size, admitted = await self._reserve_what_fits(request, route, cost, size, refused)
            translator = (translate or ChatTranslator)(request, plan, self._config())
        admitted.price_modifiers = plan.modifiers  # settlement prices the tier, audio, fees it asked for
        response = ChatResponse(self, request, admitted, plan, translator)
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

    def _check_choices(self, request: ChatRequest, route: Route) -> None:
        """``n`` above 1 where no target of the route returns several choices (Anthropic, Bedrock):
        a 400 naming ``n`` before anything is reserved (the translation would refuse it after)."""
        providers = self._config().providers
        if request.choices > 1 and all(providers[t.provider].type != ProviderType.OPENAI for t in route.targets):
            raise invalid_request(
                "'n' greater than 1 is not supported by this model: its targets return one choice.",
                param="n",
                code="unsupported_for_provider",
            )

    def _chat_reservation(
        self,
        request: ChatRequest,
        route: Route,
        cost: estimate.RequestCost,
        room: estimate.Room | None = None,
        smallest: bool = False,
    ) -> tuple[estimate.OutputPlan, ReservationSize]:
        """The output plan of a chat request and what it reserves: its prompt on the dearest
        target and its whole output cap (the 429 explains the output part in the client's terms).
        ``room``: the gateway's cap fitted into what the windows have left; ``smallest``: the
        smallest cap the gateway chooses (when even that does not fit, its refusal is the answer)."""
        limits = route.limits
        plan = estimate.plan_output(
            self._config(),
            request,
            route.resolution.targets,
            cost,
            limits.key_limits,
            limits.tenant_limits,
            limits.plan.default_max_tokens,
            room,
            smallest,
        )
        if plan is None:  # no room for the smallest cap
            return self._chat_reservation(request, route, cost, smallest=True)
        per_choice = plan.output_reserve // request.choices
        if request.max_output_tokens is not None:
            output_param = request.cap_param
            output_text = f"{output_param} {per_choice}"
        else:
            output_param = "max_tokens"
            output_text = f"the default of {per_choice} output tokens"
        if request.choices > 1:
            output_text = f"n={request.choices} x {output_text} = {plan.output_reserve} output tokens"
        size = ReservationSize(
            plan.prompt_reserve, plan.output_reserve, plan.reserve_usd, output_text, output_param, plan.prompt_bound
        )
        return plan, size

    async def _reserve_what_fits(
        self,
        request: ChatRequest,
        route: Route,
        cost: estimate.RequestCost,
        size: ReservationSize,
        refused: GatewayError,
    ) -> tuple[estimate.OutputPlan, ReservationSize, Admitted]:
        """Reserve with caps that fit what the windows have left now (one read, only on this
        path), else with the smallest cap the gateway chooses, whose refusal is then the answer (a
        window the read cannot see whole, such as a sharded one, counts as untouched)."""
        try:
            room = await self.admission.room(route, size)
        except GatewayError:
            raise refused from None
        plan, size = self._chat_reservation(request, route, cost, room)
        try:
            return plan, size, await self.admission.reserve(route, size)
        except GatewayError as still_refused:
            smallest, smallest_size = self._chat_reservation(request, route, cost, smallest=True)
            if smallest.caps == plan.caps or not _budget_refusal(still_refused):
                raise
        return smallest, smallest_size, await self.admission.reserve(route, smallest_size)

    async def embeddings(
        self, identity: Identity, raw_body: bytes, request_id: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        from quotagate.logic.embeddings import run_embeddings

        return await run_embeddings(self, self.admission, identity, raw_body, request_id)

    def settle(
        self,
        reservation: Reservation,
        target: Target | None,
        usage: Usage,
        settlement: Settlement | None = None,
        modifiers: PriceModifiers | None = None,
    ) -> float:
        """Settle a reservation at ``target``'s price (blocking: the quota store); the cost. Anthropic
        prompt-cache writes and reads, audio tokens, the tier the provider reports and the request's
        price ``modifiers`` have their own prices (:func:`quotagate.logic.pricing.settled_usd`)."""
        if target is None:
            cost = 0.0
        else:
            provider_type = self._config().providers[target.provider].type
            cost = pricing.settled_usd(target.price, provider_type, usage, modifiers)
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


def _budget_refusal(error: GatewayError) -> bool:
    """A refusal because a token or dollar window lacks room for the output cap (not a request
    rate, a concurrency limit or the prompt itself)."""
    if error.status == 429:
        return error.type in (WindowUnit.TOKENS, WindowUnit.USD)
    return error.status == 400 and error.code == estimate.TOO_LARGE_CODE and error.param == "max_tokens"


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


class ChatTranslator:
    """Chat completions' translator: every target gets the OpenAI chat body (its model, its output
    cap, always streamed with usage) and is read as OpenAI chunks, forwarded as they are."""

    def __init__(self, request: ChatRequest, plan: estimate.OutputPlan, config: GatewayConfig) -> None:
        self.request = request
        self.plan = plan
        self.config = config

    def open(self, target: Target, provider: ChatProvider) -> AsyncIterator[SSEEvent]:
        return provider.stream(_upstream_body(self.request, target, self.plan, self.config))

    def dialect(self, target: Target) -> ChatStreamDialect:
        dialect = ChatStreamDialect(self.request, self.plan.prompts[target.id], target.upstream_model)
        dialect.unreported_output = self.plan.unreported_output.get(target.id, 0)
        dialect.audio_output = self.plan.modifiers.for_type(self.config.providers[target.provider].type).audio_output
        return dialect


class ChatStreamDialect:
    """OpenAI chat chunks in, OpenAI chat chunks out (see :class:`quotagate.logic.exchange.StreamDialect`)."""

    keepalive = KEEPALIVE

    def __init__(self, request: ChatRequest, prompt_estimate: int, upstream_model: str) -> None:
        self.client_wants_usage = request.client_wants_usage
        self._upstream_model = upstream_model
        self._meter = Meter(request.messages)
        # If the provider reports no usage, the prompt is charged at its (upper bound) estimate.
        self._meter.prompt_estimate = prompt_estimate
        self._answer = CompletionAssembler()
        self._head: dict[str, Any] = {}  # the first data event: the id/created/model of a cut's chunks
        # Output no stream shows (see estimate.OutputPlan.unreported_output): settled at this bound
        # when the provider reports no usage; audio_output: that output is audio.
        self.unreported_output = 0
        self.audio_output = False

    def commits(self, event: SSEEvent) -> bool:
        if event.data is not None and not self._head:
            self._head = event.data
        return event.data is not None or event.done

    def is_end(self, event: SSEEvent) -> bool:
        return event.done

    def is_upstream_error(self, event: SSEEvent) -> bool:
        return event.data is not None and "error" in event.data

    def output_tokens(self, event: SSEEvent) -> int:
        # The meter's one running count of the answer: what the budget admits is what is settled.
        return self._meter.output_tokens(event.data) if event.data is not None else 0

    def accept(self, event: SSEEvent) -> list[SSEEvent | bytes]:
        if event.data is not None:
            self._answer.feed(event.data)
        return [event] if self._meter.observe_chunk(event, self.client_wants_usage) else []

    def client_bytes(self, event: SSEEvent) -> bytes:
        return _for_client(event, self.client_wants_usage)

    def error_event(self, message: str, code: str, error_type: str) -> bytes:
        return _error_event(message, code, error_type)

    def usage(self) -> Usage:
        usage = self._meter.usage(True)
        if usage.source == "counted" and self.unreported_output > usage.completion_tokens:
            # Only the text the gateway saw was counted; the provider billed what it hid too.
            audio = self.unreported_output if self.audio_output else 0
            usage = replace(usage, completion_tokens=self.unreported_output, audio_completion_tokens=audio)
        return usage

    def answer(self, cut: bool) -> dict[str, Any]:
        return self._answer.result(cut=cut, fallback_model=self._upstream_model)

    def cut(self) -> list[SSEEvent | bytes]:
        """The end of an answer the budget cannot pay for: ``length`` on every unfinished choice,
        the usage chunk if the client asked for usage, then ``[DONE]``."""
        data = self._head
        head = {
            "id": data.get("id"),
            "object": "chat.completion.chunk",
            "created": data.get("created"),
            "model": data.get("model"),
        }
        events: list[SSEEvent | bytes] = [
            SSEEvent.from_chunk(
                {**head, "choices": [{"index": i, "delta": {}, "logprobs": None, "finish_reason": "length"}]}
            )
            for i in self._answer.unfinished_choices() or [0]
        ]
        if self.client_wants_usage:
            usage = self._meter.usage(True)
            numbers = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
            events.append(SSEEvent.from_chunk({**head, "choices": [], "usage": numbers}))
        return [*events, DONE_EVENT]


class ChatResponse(Exchange):
    """One admitted chat request (:class:`quotagate.logic.exchange.Exchange`), with its request."""

    def __init__(
        self,
        gateway: Gateway,
        request: ChatRequest,
        admitted: Admitted,
        plan: estimate.OutputPlan,
        translator: UpstreamTranslator,
    ) -> None:
        super().__init__(gateway, admitted, translator, plan, request.stream)
        self.request = request

    @property
    def headers(self) -> dict[str, str]:
        """The exchange's headers, and the fields the gateway dropped from the request."""
        return {**super().headers, **wire.dropped_header(self.request.dropped)}


# What builds one request's translator from its (validated) chat request, its output plan and the
# configuration: ChatTranslator, or an endpoint's own.
Translate = Callable[[ChatRequest, estimate.OutputPlan, GatewayConfig], UpstreamTranslator]


# How a compact OpenAI chunk ends when it carries the ``"usage":null`` the gateway asked for.
NULL_USAGE_END = b',"usage":null}\n\n'


def _for_client(event: SSEEvent, client_wants_usage: bool) -> bytes:
    """The event's bytes for the client: the ``"usage": null`` that every chunk carries because
    the gateway asked the upstream for usage is removed when the client did not ask for it."""
    if client_wants_usage or event.data is None or "usage" not in event.data:
        return event.raw
    raw = event.raw
    if (
        event.data["usage"] is None
        and raw.endswith(NULL_USAGE_END)
        and raw.startswith(b"data: {")
        and raw.count(b"\n") == 2  # one data line
        and raw.count(b'"usage"') == 1
    ):
        # The chunk's own key (it closes the object): cut from the bytes, not a second json.dumps.
        return raw[: -len(NULL_USAGE_END)] + b"}\n\n"
    return SSEEvent.from_chunk({k: v for k, v in event.data.items() if k != "usage"}).raw


def _error_event(message: str, code: str, error_type: str = "api_error") -> bytes:
    error = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return b"data: " + json.dumps(error).encode() + b"\n\n"
