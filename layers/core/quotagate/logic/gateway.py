"""The request path of the proxy, free of any web framework:
validate → authorize the model → reserve quota → call upstream → meter → settle (exactly once)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio import to_thread

from quotagate import tokens
from quotagate.config import GatewayConfig, Model, Plan
from quotagate.dal.keys_store import KeyRecord
from quotagate.errors import GatewayError, authentication_error, not_found, permission_error
from quotagate.identity import Identity
from quotagate.logic.chat_request import ChatRequest, parse_chat_request
from quotagate.logic.metering import Meter, Usage
from quotagate.providers.base import ChatProvider, SSEEvent, StreamInterrupted, UpstreamError

KEEPALIVE = b": ping\n\n"


class ProviderFactory(Protocol):
    def for_model(self, model: Model) -> ChatProvider: ...


class KeyRecords(Protocol):
    def get(self, key_id: str) -> KeyRecord | None: ...


class Reservation(Protocol):
    def headers(self) -> dict[str, str]: ...


class Quota(Protocol):
    def reserve(self, request_id: str, key_id: str, tenant: str, key_limits: dict[str, float],
                tenant_limits: dict[str, float], prompt_tokens_estimate: int, max_output_tokens: int,
                reserve_usd: float) -> Any: ...

    def settle(self, reservation: Any, prompt_tokens: int, completion_tokens: int, actual_usd: float) -> bool: ...


@dataclass
class Outcome:
    """What happened to one request, for logs and metrics."""

    request_id: str
    identity: Identity
    model: str
    status: int = 200
    usage: Usage | None = None
    cost_usd: float = 0.0
    error: str | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class Limits:
    plan: Plan
    key_limits: dict[str, float]
    allowed_models: list[str] | None


class Gateway:
    def __init__(self, config: Callable[[], GatewayConfig], key_records: KeyRecords, quota: Quota,
                 providers: ProviderFactory, keepalive_seconds: float = 15.0,
                 max_body_bytes: int = 4 * 1024 * 1024,
                 on_finished: Callable[[Outcome], None] | None = None) -> None:
        self._config = config
        self._key_records = key_records
        self._quota = quota
        self._providers = providers
        self.keepalive_seconds = keepalive_seconds
        self.max_body_bytes = max_body_bytes
        self._on_finished = on_finished or (lambda outcome: None)

    # -- who may call what -------------------------------------------------------------------
    def limits_for(self, identity: Identity) -> Limits:
        config = self._config()
        plan_name, key_limits, allowed = identity.plan, None, None
        if identity.auth_type == "api_key":
            record = self._key_records.get(identity.key_id)
            if record is None or record.status != "active" or (
                    record.expires_at is not None and record.expires_at <= time.time()):
                raise authentication_error("This API key is no longer valid.")
            plan_name, key_limits, allowed = record.plan, record.limits, record.allowed_models
        plan = config.plan(plan_name)
        if plan is None:
            raise permission_error(f"Plan '{plan_name}' is not configured on this gateway.", "unknown_plan")
        return Limits(plan, {**plan.limits, **(key_limits or {})}, allowed)

    def models_for(self, limits: Limits) -> list[Model]:
        models = self._config().models
        return [m for name, m in models.items() if self._model_allowed(name, limits)]

    @staticmethod
    def _model_allowed(name: str, limits: Limits) -> bool:
        if limits.plan.models is not None and name not in limits.plan.models:
            return False
        return limits.allowed_models is None or name in limits.allowed_models

    def _resolve_model(self, name: str, limits: Limits) -> Model:
        model = self._config().models.get(name)
        if model is None:
            raise not_found(f"The model '{name}' does not exist or you do not have access to it.",
                            "model_not_found", "model")
        if not self._model_allowed(name, limits):
            raise permission_error(f"Your key's plan does not allow the model '{name}'.", "model_not_allowed")
        return model

    # -- chat completions --------------------------------------------------------------------
    async def chat(self, identity: Identity, raw_body: bytes, request_id: str) -> ChatResponse:
        """Validate, reserve and start the upstream call. Raises GatewayError (nothing reserved, or
        the reservation already settled) for anything the client must see as an error status."""
        request = parse_chat_request(raw_body, self.max_body_bytes)
        limits = await to_thread.run_sync(self.limits_for, identity)
        model = self._resolve_model(request.model, limits)
        max_output = request.max_output_tokens or limits.plan.default_max_tokens
        upstream_body = _upstream_body(request, model, max_output)
        prompt_estimate = await to_thread.run_sync(
            lambda: tokens.chat_prompt_tokens(request.messages, exact=False))
        output_budget = max_output * request.choices
        reservation = await to_thread.run_sync(lambda: self._quota.reserve(
            request_id, identity.key_id, identity.tenant, limits.key_limits, limits.plan.tenant_limits,
            prompt_estimate, output_budget, model.price.cost_usd(prompt_estimate, output_budget)))
        outcome = Outcome(request_id, identity, model.name)
        response = ChatResponse(self, request, model, reservation, outcome)
        try:
            await response.start(self._providers.for_model(model), upstream_body)
        except BaseException as error:
            await response.finish(error.status if isinstance(error, GatewayError) else 500)
            if isinstance(error, GatewayError):
                error.headers = {**response.headers, **error.headers}
            raise
        return response

    def _settle(self, reservation: Any, model: Model, usage: Usage) -> float:
        cost = model.price.cost_usd(usage.prompt_tokens, usage.completion_tokens)
        self._quota.settle(reservation, usage.prompt_tokens, usage.completion_tokens, cost)
        return cost


def _upstream_body(request: ChatRequest, model: Model, max_output: int) -> dict[str, Any]:
    body = copy.copy(request.body)
    body["model"] = model.upstream_model
    if request.max_output_tokens is None:
        # Cap the output so the reservation is an upper bound of what the request can cost.
        body["max_tokens"] = max_output
    if request.stream:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


class ChatResponse:
    """One admitted request: its upstream call, its body for the client, and its settlement."""

    def __init__(self, gateway: Gateway, request: ChatRequest, model: Model, reservation: Any,
                 outcome: Outcome) -> None:
        self._gateway = gateway
        self.request = request
        self._model = model
        self._reservation = reservation
        self.outcome = outcome
        self._meter = Meter(request.messages)
        self._upstream_started = False
        self._finished = False
        self._json: dict[str, Any] | None = None
        self._events: AsyncIterator[SSEEvent] | None = None
        self._first: SSEEvent | None = None

    @property
    def headers(self) -> dict[str, str]:
        headers = dict(self._reservation.headers()) if hasattr(self._reservation, "headers") else {}
        headers["x-quotagate-request-id"] = self.outcome.request_id
        headers["x-quotagate-model"] = self._model.name
        return headers

    @property
    def json(self) -> dict[str, Any] | None:
        return self._json

    async def start(self, provider: ChatProvider, body: dict[str, Any]) -> None:
        try:
            if not self.request.stream:
                self._json = await provider.complete(body)
                self._upstream_started = True
                self._meter.observe_response(self._json)
                self._json["model"] = self._model.name
                return
            self._events = provider.stream(body)
            # Wait for the first event before answering: until then an upstream failure is still an
            # HTTP error status for the client rather than an error inside a 200 stream.
            self._first = await self._events.__anext__()
            self._upstream_started = True
        except StopAsyncIteration:
            self.outcome.error = "empty upstream stream"
            raise GatewayError(502, "The upstream provider closed the stream without sending anything.",
                               "api_error", "upstream_error") from None
        except UpstreamError as error:
            self.outcome.error = error.message
            headers = {"retry-after": str(max(1, math.ceil(error.retry_after)))} if error.retry_after else {}
            raise GatewayError(error.status, error.message, error.error_type, error.code, headers=headers) from None
        except StreamInterrupted as error:
            self._upstream_started = True
            self.outcome.error = str(error)
            raise GatewayError(502, str(error), "api_error", "upstream_stream_interrupted") from None

    async def body(self) -> AsyncIterator[bytes]:
        """The SSE bytes for the client, chunk by chunk, with keep-alive comments while the upstream
        is silent. Any upstream failure after the first byte ends the stream with an error event."""
        assert self._events is not None and self._first is not None
        wants_usage = self.request.client_wants_usage
        events = self._events
        pending: asyncio.Task[SSEEvent] | None = None
        event: SSEEvent | None = self._first
        finished_cleanly = False
        try:
            while True:
                if event is not None:
                    if event.done:
                        finished_cleanly = True
                        yield event.raw
                        break
                    if self._meter.observe_chunk(event, wants_usage):
                        yield event.raw
                    event = None
                if pending is None:
                    pending = asyncio.ensure_future(events.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=self._gateway.keepalive_seconds)
                if not done:
                    yield KEEPALIVE
                    continue
                task, pending = pending, None
                try:
                    event = task.result()
                except StopAsyncIteration:
                    break
                except StreamInterrupted as error:
                    self.outcome.error = str(error)
                    yield _error_event(str(error), "upstream_stream_interrupted")
                    return
            if not finished_cleanly:
                self.outcome.error = "upstream stream ended without [DONE]"
                yield _error_event("The upstream provider ended the stream early.", "upstream_stream_interrupted")
        finally:
            with anyio.CancelScope(shield=True):
                if pending is not None:
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        await pending
                with contextlib.suppress(BaseException):
                    await events.aclose()  # type: ignore[attr-defined]

    async def finish(self, client_status: int | None = None) -> None:
        """Settle the reservation with the actual usage. Exactly once; survives cancellation."""
        if self._finished:
            return
        self._finished = True
        with anyio.CancelScope(shield=True):
            if self._events is not None:
                with contextlib.suppress(BaseException):
                    await self._events.aclose()  # type: ignore[attr-defined]
            usage = self._meter.usage(self._upstream_started)
            self.outcome.usage = usage
            if client_status is not None:
                self.outcome.status = client_status
            self.outcome.cost_usd = await to_thread.run_sync(
                self._gateway._settle, self._reservation, self._model, usage)
            self._gateway._on_finished(self.outcome)


def _error_event(message: str, code: str) -> bytes:
    import json

    error = {"error": {"message": message, "type": "api_error", "param": None, "code": code}}
    return b"data: " + json.dumps(error).encode() + b"\n\n"
