"""``POST /v1/embeddings``: validate, route (with failover), reserve the input tokens, call, settle.

Embeddings have no output tokens: the reservation is the input's token count (tiktoken, or a cheap
upper bound for huge inputs) and its price on the dearest eligible target; settlement uses the
provider's ``usage.prompt_tokens`` (or the count) at the price of the target that served."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anyio import to_thread

from quotagate import tokens, wire
from quotagate.errors import GatewayError, invalid_request
from quotagate.logic.admission import ReservationSize
from quotagate.logic.chat_request import check_declared, parse_model_request
from quotagate.logic.failover import provider_for
from quotagate.logic.metering import Usage
from quotagate.providers.base import EmbeddingsProvider
from quotagate.usage.record import outcome_for_status

if TYPE_CHECKING:
    from collections.abc import Callable

    from quotagate.config import Target
    from quotagate.identity import Identity
    from quotagate.logic.admission import Admission
    from quotagate.logic.failover import Served
    from quotagate.logic.request_types import GatewayServices

MAX_INPUTS = 2048


@dataclass
class EmbeddingsRequest:
    body: dict[str, Any]
    model: str
    texts: list[str]  # string inputs, for counting
    token_inputs: int  # inputs given as token ids count one token per id
    dropped: tuple[str, ...] = ()  # the fields removed (named in x-quotagate-dropped-params)


def parse_embeddings_request(
    raw: bytes, max_bytes: int, refuses_unknown: Callable[[str], bool] | None = None
) -> EmbeddingsRequest:
    from quotagate.wire import embeddings as wire_embeddings  # on the first request

    body, model = parse_model_request(raw, max_bytes)
    dropped = check_declared(wire_embeddings.EMBEDDINGS, body, model, refuses_unknown)
    value = body.get("input")
    items: list[Any] = value if isinstance(value, list) else [value]
    if value is None or (isinstance(value, list) and not value) or len(items) > MAX_INPUTS:
        raise invalid_request(
            f"'input' must be a string or a non-empty array of at most {MAX_INPUTS} items.", "input", "invalid_value"
        )
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return EmbeddingsRequest(body, model, [], len(value), dropped)  # one array of token ids
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
    return EmbeddingsRequest(body, model, texts, token_inputs, dropped)


async def run_embeddings(
    gateway: GatewayServices, admission: Admission, identity: Identity, raw: bytes, request_id: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The response body and headers. Raises GatewayError for every error the client sees.
    Admission, failover, the deadline and settlement are the chat path's (:mod:`quotagate.logic.admission`,
    :mod:`quotagate.logic.failover`); what is embeddings' own is the call and its usage."""
    started = gateway.clock()
    request = parse_embeddings_request(raw, gateway.max_body_bytes, gateway.refuses_unknown_fields)
    route = await admission.route(
        identity, request.model, request_id, started, usable=lambda t: can_embed(gateway, t), capability="embeddings"
    )
    counted = await to_thread.run_sync(
        lambda: sum(tokens.upper_bound_text(t) for t in request.texts) + request.token_inputs
    )
    config = gateway.config
    size = ReservationSize(
        prompt_tokens=max(config.prompt_reservation(t, counted) for t in route.targets),
        output_tokens=0,
        usd=max(t.price.cost_usd(config.prompt_reservation(t, counted), 0) for t in route.targets),
    )
    admitted = await admission.reserve(route, size)
    failover = admitted.failover()

    async def attempt(target: Target) -> dict[str, Any]:
        provider = provider_for(gateway.providers, target)
        assert isinstance(provider, EmbeddingsProvider)  # only such targets were routed
        return await failover.within_first_byte(
            target, provider.embed({**request.body, "model": target.upstream_model})
        )

    served: Served[dict[str, Any]] | None = None
    status = 200
    try:
        served = await failover.run(route.order, attempt)
        admitted.outcome.first_byte_at = gateway.clock()
        admitted.outcome.target = served.target.id
        await admitted.remaining_read_done()
        return served.result, {**admitted.headers(served.target), **wire.dropped_header(request.dropped)}
    except GatewayError as error:
        status = error.status
        await admitted.remaining_read_done()
        error.headers = {**admitted.headers(), **error.headers}
        raise
    finally:
        usage = embeddings_usage(served.result if served else None, counted)
        await admitted.settle(served.target if served else None, usage, outcome_for_status(status), status)


def can_embed(gateway: GatewayServices, target: Target) -> bool:
    return isinstance(gateway.providers.for_target(target), EmbeddingsProvider)


def embeddings_usage(answer: dict[str, Any] | None, counted: int) -> Usage:
    """The provider's ``usage.prompt_tokens``, else the gateway's count; nothing when no target served."""
    if answer is None:
        return Usage(0, 0, "counted")
    reported = answer.get("usage") or {}
    prompt = reported.get("prompt_tokens") if isinstance(reported, dict) else None
    if isinstance(prompt, int) and not isinstance(prompt, bool) and prompt >= 0:
        return Usage(prompt, 0, "provider")
    return Usage(counted, 0, "counted")
