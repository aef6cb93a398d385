"""``POST /v1/embeddings``: validate, route (with failover), reserve the input tokens, call, settle.

Embeddings have no output tokens: the reservation is the input's token count (tiktoken, or a cheap
upper bound for huge inputs) and its price on the dearest eligible target; settlement uses the
provider's ``usage.prompt_tokens`` (or the count) at the price of the target that served."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio import to_thread

from quotagate import tokens
from quotagate.errors import GatewayError, invalid_request
from quotagate.logic.chat_request import parse_model_request
from quotagate.providers.base import EmbeddingsProvider, UpstreamError
from quotagate.quota.reservation import ReservationRequest

if TYPE_CHECKING:
    from quotagate.identity import Identity
    from quotagate.logic.gateway import Gateway

MAX_INPUTS = 2048


@dataclass
class EmbeddingsRequest:
    body: dict[str, Any]
    model: str
    texts: list[str]  # string inputs, for counting
    token_inputs: int  # inputs given as token ids count one token per id


def parse_embeddings_request(raw: bytes, max_bytes: int) -> EmbeddingsRequest:
    body, model = parse_model_request(raw, max_bytes)
    value = body.get("input")
    items: list[Any] = value if isinstance(value, list) else [value]
    if value is None or (isinstance(value, list) and not value) or len(items) > MAX_INPUTS:
        raise invalid_request(
            f"'input' must be a string or a non-empty array of at most {MAX_INPUTS} items.", "input", "invalid_value"
        )
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return EmbeddingsRequest(body, model, [], len(value))  # one array of token ids
    texts, token_inputs = [], 0
    for item in items:
        if isinstance(item, str) and item:
            texts.append(item)
        elif isinstance(item, list) and item and all(isinstance(v, int) and not isinstance(v, bool) for v in item):
            token_inputs += len(item)
        else:
            raise invalid_request(
                "Each 'input' item must be a non-empty string or an array of token ids.", "input", "invalid_value"
            )
    for name in ("dimensions",):
        if name in body and (not isinstance(body[name], int) or isinstance(body[name], bool) or body[name] < 1):
            raise invalid_request(f"'{name}' must be a positive integer.", name, "invalid_value")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise invalid_request("'encoding_format' must be 'float' or 'base64'.", "encoding_format", "invalid_value")
    return EmbeddingsRequest(body, model, texts, token_inputs)


async def run_embeddings(
    gateway: Gateway, identity: Identity, raw: bytes, request_id: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The response body and headers. Raises GatewayError for every error the client sees."""
    from quotagate.logic.gateway import Outcome, _AttemptFailed, _classify, _client_error, usage_fields
    from quotagate.logic.metering import Usage
    from quotagate.usage.record import Settlement, outcome_for_status, source_of

    started = gateway.clock()

    request = parse_embeddings_request(raw, gateway.max_body_bytes)
    limits = await to_thread.run_sync(gateway.limits_for, identity)
    resolution = gateway.resolve(request.model, limits)
    providers = gateway._providers
    embedders = {t.id: p for t in resolution.targets if isinstance(p := providers.for_target(t), EmbeddingsProvider)}
    targets = [t for t in resolution.targets if t.id in embedders]
    if not targets:
        raise invalid_request(
            f"The model '{request.model}' does not support embeddings.", "model", "unsupported_for_model"
        )
    views = await to_thread.run_sync(gateway.breaker.views, [t.id for t in targets])
    order = [
        t
        for t in gateway.router.order(
            resolution, f"{identity.tenant}/{identity.consumer}", {t: v.state for t, v in views.items()}
        )
        if t in targets
    ]
    if not order:
        raise GatewayError(
            503,
            f"No upstream for the model '{request.model}' is available right now.",
            "api_error",
            "upstream_unavailable",
            headers={"retry-after": "1"},
        )
    estimate = await to_thread.run_sync(
        lambda: sum(tokens.upper_bound_text(t) for t in request.texts) + request.token_inputs
    )
    config = gateway._config()
    prompt_reserve = max(config.prompt_reservation(t, estimate) for t in targets)
    reserve_usd = max(t.price.cost_usd(config.prompt_reservation(t, estimate), 0) for t in targets)
    reservation = await to_thread.run_sync(
        lambda: gateway._quota.reserve(
            ReservationRequest(
                request_id,
                identity.key_id,
                identity.tenant,
                limits.key_limits,
                limits.tenant_limits,
                prompt_reserve,
                0,
                reserve_usd,
                usage_fields=usage_fields(identity, request.model, resolution.model.name),
            )
        )
    )
    remaining = gateway.start_remaining_read(reservation)  # overlaps the upstream call
    outcome = Outcome(request_id, identity, resolution.model.name, requested_model=request.model)
    headers = {"x-quotagate-request-id": request_id}
    served, data, status = None, None, 200
    try:
        last: UpstreamError | None = None
        for target in order:
            permit = gateway.breaker.allow_cached(target.id) or await to_thread.run_sync(
                gateway.breaker.allow, target.id
            )
            if permit is None:
                continue
            body = {**request.body, "model": target.upstream_model}
            timeout = gateway._config().timeouts_for(target).first_byte
            try:
                with anyio.fail_after(timeout):
                    data = await embedders[target.id].embed(body)
            except (UpstreamError, TimeoutError) as caught:
                failed = (
                    caught
                    if isinstance(caught, UpstreamError)
                    else UpstreamError(
                        504,
                        f"Upstream provider '{target.provider}' timed out.",
                        error_type="timeout",
                        code="upstream_timeout",
                    )
                )
                verdict = _classify(failed)  # the same failover rule as chat completions
                if not isinstance(verdict, _AttemptFailed):
                    raise _client_error(failed) from None
                last = failed
                outcome.attempts.append(f"{target.id}: {failed.status} {failed.code}")
                if verdict.count_against_target:
                    await to_thread.run_sync(gateway.breaker.record_failure, permit)
                continue
            if gateway.breaker.success_needs_write(permit):
                await to_thread.run_sync(gateway.breaker.record_success, permit)
            served = target
            break
        if served is None or data is None:
            raise _client_error(
                last or UpstreamError(503, "No upstream is available right now.", code="upstream_unavailable")
            )
        outcome.target = served.id
        headers["x-quotagate-target"] = served.id
        await gateway.finish_remaining_read(remaining)
        return data, {**reservation.headers(), **headers}
    except GatewayError as error:
        status = error.status
        await gateway.finish_remaining_read(remaining)
        error.headers = {**reservation.headers(), **headers, **error.headers}
        raise
    finally:
        with anyio.CancelScope(shield=True):
            reported = (data or {}).get("usage") or {}
            prompt = reported.get("prompt_tokens")
            if not isinstance(prompt, int) or prompt < 0:
                prompt = estimate if served else 0
            usage = Usage(prompt, 0, "provider" if isinstance(reported.get("prompt_tokens"), int) else "counted")
            outcome.usage, outcome.status = usage, status
            try:
                elapsed_ms = (gateway.clock() - started) * 1000
                settlement = Settlement(
                    outcome_for_status(status),
                    status,
                    source_of(usage.source),
                    served.id if served else None,
                    elapsed_ms if data is not None else None,
                    elapsed_ms,
                    outcome.failovers,
                )
                outcome.cost_usd = await to_thread.run_sync(gateway._settle, reservation, served, usage, settlement)
            except Exception:  # the reservation stays charged: never an overshoot, and the answer stands
                outcome.error = "settlement failed; the reservation stays charged"
            gateway._on_finished(outcome)
