"""What a request asks for that changes its provider's bill beyond its tokens, and the dollars of it.

A target's price (:class:`quotagate.config.Price`) carries the modifiers; a request field whose
modifier the price does not carry is a 400 naming the field (code ``unpriced_parameter``) before
anything is reserved, so nothing reaches a provider unpriced:

- ``service_tier`` (OpenAI chat; Anthropic Messages): every token price times the tier's factor.
  The reservation uses the tier asked for (``auto``/``default``/none: the ``auto``/``default`` entry,
  else 1x); settlement the tier the provider reports having used.
- ``inference_geo`` (Anthropic): times the geography's factor (``global`` or none: 1x unless listed).
- ``speed: "fast"`` (Anthropic fast mode): times ``fast_mode``.
- ``modalities`` with ``"audio"`` (OpenAI chat): audio output tokens at ``audio_output_per_million``;
  the answer's audio is not shown as text, so the whole output cap is reserved at the dearer of the
  two output prices. Audio input parts use ``audio_input_per_million`` (the input price if unset).
- ``web_search_options`` (OpenAI chat): one search per request at ``tool_calls_usd.web_search``.
- Hidden output (bounded, not priced): ``reasoning_effort`` (reasoning tokens) and ``prediction``
  (rejected prediction tokens, billed as output whatever the cap) are output no stream shows: the
  whole cap is reserved up front, and a prediction's own length on top of it.

Each endpoint says which target types receive the fields (:attr:`PriceModifiers.provider_types`):
a target that gets a translation without them is priced at its plain token prices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from quotagate import tokens
from quotagate.config import HostedTool, ProviderType
from quotagate.errors import invalid_request

if TYPE_CHECKING:
    from quotagate.config import Price
    from quotagate.errors import GatewayError
    from quotagate.logic.metering import Usage

UNPRICED_CODE = "unpriced_parameter"
AUDIO_MODALITY = "audio"
NO_REASONING_EFFORTS = frozenset({"none"})
FAST_SPEED = "fast"


@dataclass(frozen=True)
class PriceModifiers:
    """The price-changing fields of one request, as the targets of ``provider_types`` receive them."""

    provider_types: frozenset[str] = frozenset()
    service_tier: str | None = None
    inference_geo: str | None = None
    fast: bool = False
    audio_output: bool = False
    # hosted tool -> the most calls the request can make (each billed at tool_calls_usd)
    tool_calls: tuple[tuple[HostedTool, int], ...] = ()
    # the fields that make the provider bill output no stream shows (the whole cap is reserved)
    hidden_output: tuple[str, ...] = ()
    extra_output_tokens: int = 0  # output billed beyond the cap (rejected prediction tokens), cl100k
    params: dict[str, str] = field(default_factory=dict, compare=False)  # modifier -> the field that asked
    # The modifiers of the body other target types receive (an endpoint that sends one body natively
    # and a translation to the others): see for_type.
    others: tuple[PriceModifiers, ...] = ()

    def applies(self, provider_type: str) -> bool:
        return provider_type in self.provider_types

    def for_type(self, provider_type: str) -> PriceModifiers:
        """The modifiers of what targets of ``provider_type`` receive (none: the plain prices)."""
        for modifiers in (self, *self.others):
            if modifiers.applies(provider_type):
                return modifiers
        return NO_MODIFIERS

    def merge(self, other: PriceModifiers) -> PriceModifiers:
        """Both bodies' modifiers, each kept for the target types that receive its body."""
        if not other.provider_types and not other.others:
            return self
        if not self.provider_types and not self.others:
            return other
        return replace(self, others=(*self.others, other, *other.others))


NO_MODIFIERS = PriceModifiers()


def _prediction_tokens(prediction: Any) -> int:
    content = prediction.get("content") if isinstance(prediction, dict) else prediction
    if isinstance(content, str):
        return tokens.upper_bound_text(content)
    return tokens.upper_bound_text(json.dumps(content, ensure_ascii=False))


def chat_modifiers(body: dict[str, Any]) -> PriceModifiers:
    """The price-changing fields of an OpenAI chat completion request (sent to OpenAI-compatible
    targets as they are; the Anthropic and Bedrock translations leave them out)."""
    params: dict[str, str] = {}
    tier = body.get("service_tier")
    if tier is not None:
        params["service_tier"] = "service_tier"
    modalities = body.get("modalities")
    audio = isinstance(modalities, list) and AUDIO_MODALITY in modalities
    if audio:
        params["audio_output"] = "modalities"
    hidden: list[str] = []
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in NO_REASONING_EFFORTS:
        hidden.append("reasoning_effort")
    extra = 0
    if body.get("prediction") is not None:
        hidden.append("prediction")
        extra = _prediction_tokens(body["prediction"])
    if audio:
        hidden.append("modalities")
    calls: tuple[tuple[HostedTool, int], ...] = ()
    if body.get("web_search_options") is not None:
        # OpenAI's search models in chat search once per request.
        calls = ((HostedTool.WEB_SEARCH, 1),)
        params[HostedTool.WEB_SEARCH] = "web_search_options"
    return PriceModifiers(
        provider_types=frozenset({ProviderType.OPENAI}),
        service_tier=tier if isinstance(tier, str) else None,
        audio_output=audio,
        tool_calls=calls,
        hidden_output=tuple(hidden),
        extra_output_tokens=extra,
        params=params,
    )


def messages_modifiers(body: dict[str, Any]) -> PriceModifiers:
    """The price-changing fields of an Anthropic Messages request (sent as they are to Anthropic
    targets; the chat translation for the others leaves them out). Thinking is bounded by
    ``max_tokens``, which is reserved whole."""
    params: dict[str, str] = {}
    tier = body.get("service_tier")
    if tier == "standard_only":
        tier = "standard"
    for name in ("service_tier", "inference_geo", "speed"):
        if body.get(name) is not None:
            params[name] = name
    geo = body.get("inference_geo")
    return PriceModifiers(
        provider_types=frozenset({ProviderType.ANTHROPIC}),
        service_tier=tier if isinstance(tier, str) else None,
        inference_geo=geo if isinstance(geo, str) else None,
        fast=body.get("speed") == FAST_SPEED,
        params=params,
    )


def _unpriced(param: str, what: str, target_id: str) -> GatewayError:
    return invalid_request(
        f"'{param}' {what}, which changes what the provider bills, and the price of '{target_id}' on "
        f"this gateway does not carry it, so the request is refused. Remove '{param}'.",
        param=param,
        code=UNPRICED_CODE,
    )


def request_factor(modifiers: PriceModifiers, price: Price, target_id: str) -> float:
    """The multiplier of every token price for the request as sent. 400 ``unpriced_parameter`` for a
    tier, geography or speed the price does not carry."""
    tier = price.tier_factor(modifiers.service_tier)
    if tier is None:
        raise _unpriced("service_tier", f"is {modifiers.service_tier!r}", target_id)
    geo = price.geo_factor(modifiers.inference_geo)
    if geo is None:
        raise _unpriced("inference_geo", f"is {modifiers.inference_geo!r}", target_id)
    fast = 1.0
    if modifiers.fast:
        if price.fast_mode is None:
            raise _unpriced("speed", "asks for fast mode", target_id)
        fast = price.fast_mode
    return tier * geo * fast


def tool_fees_usd(modifiers: PriceModifiers, price: Price, target_id: str) -> float:
    """The per-call fees of the hosted tools the request may use, at their most calls."""
    total = 0.0
    for tool, calls in modifiers.tool_calls:
        fee = price.tool_call_usd(tool)
        if fee is None:
            raise _unpriced(modifiers.params.get(tool, str(tool)), f"uses the provider's {tool} tool", target_id)
        total += fee * calls
    return total


def output_price_per_million(modifiers: PriceModifiers, price: Price, target_id: str) -> float:
    """The dearest price an output token of the request can have."""
    if not modifiers.audio_output:
        return price.output_per_million
    if price.audio_output_per_million is None:
        raise _unpriced("modalities", "asks for audio output", target_id)
    return max(price.output_per_million, price.audio_output_per_million)


@dataclass(frozen=True)
class TargetPricing:
    """The request's modifiers applied to one target's price: what the reservation uses."""

    factor: float = 1.0
    output_per_million: float = 0.0
    audio_input_per_million: float = 0.0
    fees_usd: float = 0.0

    def reserve_usd(self, price: Price, prompt_tokens: int, audio_prompt_tokens: int, output_tokens: int) -> float:
        audio = min(audio_prompt_tokens, prompt_tokens)
        tokens_usd = (
            (prompt_tokens - audio) * price.input_per_million
            + audio * self.audio_input_per_million
            + output_tokens * self.output_per_million
        ) / 1e6
        return tokens_usd * self.factor + self.fees_usd

    def output_usd(self, output_tokens: int) -> float:
        return output_tokens * self.output_per_million * self.factor / 1e6


def target_pricing(modifiers: PriceModifiers, price: Price, provider_type: str, target_id: str) -> TargetPricing:
    """How the reservation prices a request on one target; 400 for a modifier the price lacks."""
    audio_input = price.audio_input_per_million
    if audio_input is None:
        audio_input = price.input_per_million
    modifiers = modifiers.for_type(provider_type)
    if not modifiers.applies(provider_type):
        return TargetPricing(1.0, price.output_per_million, audio_input, 0.0)
    return TargetPricing(
        factor=request_factor(modifiers, price, target_id),
        output_per_million=output_price_per_million(modifiers, price, target_id),
        audio_input_per_million=audio_input,
        fees_usd=tool_fees_usd(modifiers, price, target_id),
    )


def settled_usd(price: Price, provider_type: str, usage: Usage, modifiers: PriceModifiers | None) -> float:
    """Dollars of a served request: its tokens by kind (audio, prompt-cache reads and writes on
    Anthropic) times the factor of the tier the provider reports (else the one asked for), the
    geography and speed asked for, plus the hosted tools' fees."""
    modifiers = modifiers.for_type(provider_type) if modifiers is not None else NO_MODIFIERS
    audio_in = min(usage.audio_prompt_tokens, usage.prompt_tokens)
    audio_out = min(usage.audio_completion_tokens, usage.completion_tokens)
    cache = (
        (usage.cache_read_tokens, usage.cache_creation_tokens, usage.cache_creation_1h_tokens)
        if provider_type == ProviderType.ANTHROPIC
        else (0, 0, 0)
    )
    tokens_usd = price.cost_usd(usage.prompt_tokens - audio_in, usage.completion_tokens - audio_out, *cache)
    audio_input = price.audio_input_per_million
    audio_output = price.audio_output_per_million
    tokens_usd += (
        audio_in * (price.input_per_million if audio_input is None else audio_input)
        + audio_out * (price.output_per_million if audio_output is None else audio_output)
    ) / 1e6
    tier = price.tier_factor(usage.service_tier) if usage.service_tier is not None else None
    if tier is None:
        tier = price.tier_factor(modifiers.service_tier) or 1.0
    geo = price.geo_factor(modifiers.inference_geo) or 1.0
    fast = price.fast_mode if modifiers.fast and price.fast_mode is not None else 1.0
    fees = 0.0
    served = usage.total_tokens > 0  # a target that failed before answering bills no tool call
    for tool, calls in modifiers.tool_calls if served else ():
        fees += (price.tool_call_usd(tool) or 0.0) * usage.tool_calls.get(tool, calls)
    return tokens_usd * tier * geo * fast + fees
