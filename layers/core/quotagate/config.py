"""Gateway configuration: plans (limits), models and aliases (ordered targets), providers and the
circuit breaker.

Loaded from an SSM parameter through Powertools Parameters (cached) in AWS, or from a JSON file
locally. ``${VAR}`` in string values is replaced by the environment variable VAR, so one file can
point at a local mock server or a real provider.

A model name (``models.<name>``) is either the simple form, one target written inline::

    {"provider": "openai", "upstream_model": "gpt-4o-mini", "price": {...}}

or an alias with ordered targets and routing options::

    {"targets": [{"provider": "openai", "upstream_model": "gpt-4o-mini", "weight": 90,
                  "price": {"input_per_million": 0.15, "output_per_million": 0.6},
                  "timeouts": {"connect": 2, "first_byte": 10, "idle": 30}},
                 {"provider": "anthropic", "upstream_model": "claude-haiku-4-5", "weight": 10,
                  "plans": ["pro", "enterprise"]}],
     "on_tier_mismatch": "downgrade", "downgrade_to": "chat-mini", "sticky": true, "deadline": 60}

See :mod:`quotagate.logic.router` for what each option does.

Every field is typed and checked by the pydantic models of :mod:`quotagate.config_models`
(:func:`quotagate.config_models.parse_config`); unknown fields are refused. The proxy's hot path
does not import pydantic (it would add about 100 ms to a cold start): :func:`load_config` builds
the plain dataclasses below from a document that was validated before it got there — by the CDK
synth, which writes the SSM parameter, or by local mode's start-up for a file. The keys function
and the CLI validate with :func:`quotagate.config_models.load_validated_config` (the models import
this module, never the other way round).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from quotagate import settings

if TYPE_CHECKING:
    from collections.abc import Callable

LIMIT_NAMES = (
    "requests_per_minute",
    "tokens_per_minute",
    "tokens_per_day",
    "tokens_per_month",
    "usd_per_day",
    "usd_per_month",
    "max_tokens_per_request",
    "max_concurrent_requests",
)
DEFAULT_CONFIG_FILE = Path(__file__).with_name("default_config.json")
_CACHE_SECONDS = 60
_VAR_RE = re.compile(r"\$\{([A-Z0-9_]+)\}")


class ConfigError(ValueError):
    pass


# Anthropic prompt caching, as multiples of the input price.
CACHE_WRITE_5M_FACTOR = 1.25
CACHE_WRITE_1H_FACTOR = 2.0
CACHE_READ_FACTOR = 0.1


class HostedTool(StrEnum):
    """A tool the provider runs and bills per call (``price.tool_calls_usd``)."""

    WEB_SEARCH = "web_search"  # OpenAI chat ``web_search_options``; Anthropic's web search server tool
    WEB_FETCH = "web_fetch"  # Anthropic's web fetch server tool


# A request's service tier, inference geography or fast mode is none of these: the standard price.
STANDARD_TIERS = frozenset({"auto", "default", "standard"})
STANDARD_GEO = "global"


@dataclass(frozen=True)
class Price:
    """A target's prices. Beyond the per-token prices, what changes the provider's bill (see
    :mod:`quotagate.logic.pricing`): a request field the price does not carry is refused."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0
    # Audio tokens (OpenAI ``input_audio`` parts, ``modalities: ["audio"]``). Input: None bills it as
    # text input; output: None refuses audio output.
    audio_input_per_million: float | None = None
    audio_output_per_million: float | None = None
    # Multipliers of every token price: ``service_tier`` (OpenAI; Anthropic reports one in its
    # usage), Anthropic ``inference_geo``, Anthropic ``speed: "fast"`` (None: refused).
    service_tiers: tuple[tuple[str, float], ...] = ()
    inference_geos: tuple[tuple[str, float], ...] = ()
    fast_mode: float | None = None
    # Dollars per call of a hosted tool the provider runs (``web_search``...).
    tool_calls_usd: tuple[tuple[str, float], ...] = ()

    def tier_factor(self, tier: str | None) -> float | None:
        """The multiplier of a service tier; None for a tier the price does not carry."""
        listed = dict(self.service_tiers)
        if tier is None or tier in STANDARD_TIERS:
            return listed.get(tier or "auto", 1.0)
        return listed.get(tier)

    def geo_factor(self, geo: str | None) -> float | None:
        listed = dict(self.inference_geos)
        if geo is None or geo == STANDARD_GEO:
            return listed.get(STANDARD_GEO, 1.0)
        return listed.get(geo)

    def tool_call_usd(self, tool: str) -> float | None:
        return dict(self.tool_calls_usd).get(tool)

    def cost_usd(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cache_read: int = 0,
        cache_write: int = 0,
        cache_write_1h: int = 0,
    ) -> float:
        """Dollars of a request. ``prompt_tokens`` includes the cached ones: of those, prompt-cache
        writes cost 1.25x the input price (5-minute cache) or 2x (``cache_write_1h``, the 1-hour
        cache) and reads 0.1x — Anthropic's prices."""
        cache_write_1h = min(cache_write_1h, cache_write)
        plain = max(0, prompt_tokens - cache_read - cache_write)
        input_units = (
            plain
            + CACHE_WRITE_5M_FACTOR * (cache_write - cache_write_1h)
            + CACHE_WRITE_1H_FACTOR * cache_write_1h
            + CACHE_READ_FACTOR * cache_read
        )
        return (input_units * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


class ProviderType(StrEnum):
    OPENAI = "openai"  # OpenAI-compatible HTTP
    ANTHROPIC = "anthropic"  # the Messages API
    BEDROCK = "bedrock"  # Converse


PROVIDER_TYPES: tuple[str, ...] = tuple(ProviderType)
# How an "openai" provider sends its key: "authorization" (Bearer) or "api-key" (Azure OpenAI).
AuthHeader = Literal["authorization", "api-key"]
# The request field that carries the output cap to a provider. OpenAI's reasoning models take only
# max_completion_tokens; many OpenAI-compatible servers (older vLLM, Ollama) honour only max_tokens.
# The Anthropic and Bedrock adapters translate either into their own field.
MaxOutputField = Literal["max_tokens", "max_completion_tokens"]
MAX_OUTPUT_FIELDS: tuple[str, ...] = get_args(MaxOutputField)
DEFAULT_MAX_OUTPUT_TOKENS = 4096


class TierMismatchPolicy(StrEnum):
    """What a plan that may not use some of a model's targets gets."""

    REFUSE = "refuse"  # 403
    DOWNGRADE = "downgrade"  # the model's downgrade_to


TIER_MISMATCH_POLICIES: tuple[str, ...] = tuple(TierMismatchPolicy)


class UnknownFieldsPolicy(StrEnum):
    """What a request field the gateway does not declare (quotagate.wire) gets, per model."""

    DROP = "drop"  # removed, named in x-quotagate-dropped-params, never forwarded
    REFUSE = "refuse"  # a 400 naming the field


@dataclass(frozen=True)
class Provider:
    name: str
    type: ProviderType
    base_url: str  # "" for bedrock: the AWS regional endpoint
    api_key_secret: str | None = None  # Secrets Manager name; None for keyless upstreams (and bedrock)
    connect_timeout: float = 5.0
    read_timeout: float = 120.0  # default of a target's first-byte and idle timeouts
    region: str | None = None  # bedrock: the AWS region (None: the function's own region)
    # Reservations count prompts with cl100k; a provider whose tokenizer yields more tokens for the
    # same text needs a larger estimate for the reservation to stay an upper bound.
    prompt_token_factor: float = 1.0
    auth_header: AuthHeader = "authorization"
    max_output_field: MaxOutputField = "max_tokens"  # see MaxOutputField; a target can override it


@dataclass(frozen=True)
class Timeouts:
    """Effective timeouts of one target (seconds)."""

    connect: float
    first_byte: float  # request sent -> first event of a stream (non-stream: the whole answer)
    idle: float  # longest silence between two streamed events


@dataclass(frozen=True)
class Target:
    """One upstream that can serve a model name: a provider and the model it calls there."""

    provider: str
    upstream_model: str
    price: Price = field(default_factory=Price)
    weight: float | None = None  # share of first picks (A/B); None: see Model.weights
    plans: tuple[str, ...] | None = None  # plans allowed to use this target; None: every plan
    connect_timeout: float | None = None  # None: the provider's
    first_byte_timeout: float | None = None
    idle_timeout: float | None = None
    # The model's own maximum output: the cap sent when the client sends none.
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    max_output_field: MaxOutputField | None = None  # None: the provider's
    image_tokens: int | None = None  # worst-case prompt tokens per image; None: the provider type's
    # A reasoning model bills hidden output that no stream shows: its whole cap is reserved up front.
    reasoning: bool = False

    @property
    def id(self) -> str:
        """``<provider>/<upstream model>``: the circuit-breaker key and the x-quotagate-target header."""
        return f"{self.provider}/{self.upstream_model}"

    def allows_plan(self, plan: str) -> bool:
        return self.plans is None or plan in self.plans


@dataclass(frozen=True)
class Model:
    """A model name or alias clients call, and the ordered targets that serve it."""

    name: str
    targets: tuple[Target, ...]
    on_tier_mismatch: TierMismatchPolicy = TierMismatchPolicy.REFUSE
    downgrade_to: str | None = None  # another model name, for "downgrade"
    sticky: bool = False  # the first pick is a stable hash of consumer and alias
    deadline: float | None = None  # total seconds for the whole request (None: no total deadline)
    created: int | None = None  # Unix seconds shown by /v1/models (None: when this process started)
    unknown_fields: UnknownFieldsPolicy = UnknownFieldsPolicy.DROP

    # The first target, for code and listings that think of a model as one upstream.
    @property
    def provider(self) -> str:
        return self.targets[0].provider

    @property
    def upstream_model(self) -> str:
        return self.targets[0].upstream_model

    @property
    def price(self) -> Price:
        return self.targets[0].price


@dataclass(frozen=True)
class BreakerPolicy:
    """Circuit breaker settings, shared by every target (top-level ``circuit_breaker``)."""

    failure_threshold: int = 5  # consecutive failures that open a circuit
    # Distinct tenants whose failures it takes to open a target's circuit for everyone (fewer open
    # it for the failing tenants alone): one tenant's content cannot take a model down.
    tenant_threshold: int = 3
    cooldown_seconds: float = 30.0  # open -> half-open after this long
    probe_lease_seconds: float = 60.0  # a half-open probe that never reports back frees its lease after this
    cache_seconds: float = 2.0  # how long a container trusts its copy of a circuit's state


@dataclass(frozen=True)
class Plan:
    name: str
    limits: dict[str, float]  # per key (tenant limits live on tenant records, not on plans)
    models: tuple[str, ...] | None  # None: every model
    default_max_tokens: int

    def includes(self, model_name: str) -> bool:
        return self.models is None or model_name in self.models


@dataclass(frozen=True)
class GatewayConfig:
    plans: dict[str, Plan]
    models: dict[str, Model]
    providers: dict[str, Provider]
    default_plan: str
    circuit_breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    # Limits of a tenant that has no tenant record (keys API ``create_tenant``); empty: none.
    default_tenant_limits: dict[str, float] = field(default_factory=dict)

    def plan(self, name: str) -> Plan | None:
        return self.plans.get(name)

    def prompt_reservation(self, target: Target, cl100k_tokens: int) -> int:
        """Prompt tokens to reserve for ``target``: an upper bound in the provider's own tokens."""
        return math.ceil(cl100k_tokens * self.providers[target.provider].prompt_token_factor)

    def max_output_field(self, target: Target) -> MaxOutputField:
        """The request field that carries the output cap to ``target``."""
        return target.max_output_field or self.providers[target.provider].max_output_field

    def timeouts_for(self, target: Target) -> Timeouts:
        provider = self.providers[target.provider]
        return Timeouts(
            connect=target.connect_timeout if target.connect_timeout is not None else provider.connect_timeout,
            first_byte=target.first_byte_timeout if target.first_byte_timeout is not None else provider.read_timeout,
            idle=target.idle_timeout if target.idle_timeout is not None else provider.read_timeout,
        )


def expand_variables(value: Any) -> Any:
    """``${VAR}`` in every string of a document replaced by the environment variable VAR."""
    if isinstance(value, str):
        return _VAR_RE.sub(lambda m: settings.env(m.group(1)) or "", value)
    if isinstance(value, dict):
        return {k: expand_variables(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_variables(v) for v in value]
    return value


# -- building: the document is already validated (config_models) ---------------------------------
# cl100k (what the gateway counts with) matches OpenAI models; Claude's and other Bedrock models'
# tokenizers produce more tokens for the same English text, so their estimates get a margin.
DEFAULT_PROMPT_TOKEN_FACTORS = {"openai": 1.0, "anthropic": 1.3, "bedrock": 1.3}
DEFAULT_PLAN_MAX_TOKENS = 1024


def _build_provider(name: str, raw: dict[str, Any]) -> Provider:
    kind = ProviderType(raw.get("type", ProviderType.OPENAI))
    factor = raw.get("prompt_token_factor")
    return Provider(
        name=name,
        type=kind,
        base_url=(raw.get("base_url") or "").rstrip("/"),
        api_key_secret=raw.get("api_key_secret"),
        connect_timeout=float(raw.get("connect_timeout") or 5.0),
        read_timeout=float(raw.get("read_timeout") or 120.0),
        region=raw.get("region") or None,
        prompt_token_factor=float(DEFAULT_PROMPT_TOKEN_FACTORS[kind] if factor is None else factor),
        auth_header=raw.get("auth_header", "authorization"),
        max_output_field=raw.get("max_output_field", "max_tokens"),
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _factors(raw: Any) -> tuple[tuple[str, float], ...]:
    return tuple((name, float(value)) for name, value in (raw or {}).items())


def _build_price(raw: dict[str, Any]) -> Price:
    return Price(
        input_per_million=float(raw.get("input_per_million") or 0.0),
        output_per_million=float(raw.get("output_per_million") or 0.0),
        audio_input_per_million=_optional_float(raw.get("audio_input_per_million")),
        audio_output_per_million=_optional_float(raw.get("audio_output_per_million")),
        service_tiers=_factors(raw.get("service_tiers")),
        inference_geos=_factors(raw.get("inference_geos")),
        fast_mode=_optional_float(raw.get("fast_mode")),
        tool_calls_usd=_factors(raw.get("tool_calls_usd")),
    )


def _build_target(raw: dict[str, Any], default_model: str) -> Target:
    timeouts = raw.get("timeouts") or {}
    price = raw.get("price") or {}
    reasoning = bool(raw.get("reasoning"))
    plans = raw.get("plans")
    return Target(
        provider=raw["provider"],
        upstream_model=raw.get("upstream_model") or default_model,
        price=_build_price(price),
        weight=_optional_float(raw.get("weight")),
        plans=None if plans is None else tuple(plans),
        connect_timeout=_optional_float(timeouts.get("connect")),
        first_byte_timeout=_optional_float(timeouts.get("first_byte")),
        idle_timeout=_optional_float(timeouts.get("idle")),
        max_output_tokens=raw.get("max_output_tokens") or DEFAULT_MAX_OUTPUT_TOKENS,
        max_output_field=raw.get("max_output_field") or ("max_completion_tokens" if reasoning else None),
        image_tokens=raw.get("image_tokens"),
        reasoning=reasoning,
    )


def _build_model(name: str, raw: dict[str, Any]) -> Model:
    if raw.get("targets") is not None:
        targets = tuple(_build_target(t, name) for t in raw["targets"])
    else:
        targets = (_build_target(raw, name),)  # the simple form: one target, written inline
    downgrade_to = raw.get("downgrade_to")
    policy = raw.get("on_tier_mismatch") or (
        TierMismatchPolicy.DOWNGRADE if downgrade_to else TierMismatchPolicy.REFUSE
    )
    return Model(
        name=name,
        targets=targets,
        on_tier_mismatch=TierMismatchPolicy(policy),
        downgrade_to=downgrade_to,
        sticky=bool(raw.get("sticky")),
        deadline=_optional_float(raw.get("deadline")),
        created=raw.get("created"),
        unknown_fields=UnknownFieldsPolicy(raw.get("unknown_fields") or UnknownFieldsPolicy.DROP),
    )


def limits_of(raw: dict[str, Any] | None) -> dict[str, float]:
    """The limits that are set (a null value is no limit)."""
    return {name: value for name, value in (raw or {}).items() if value is not None}


def _build_plan(name: str, raw: dict[str, Any]) -> Plan:
    models = raw.get("models")
    return Plan(
        name=name,
        limits=limits_of(raw.get("limits")),
        models=None if models in (None, "*") else tuple(models),
        default_max_tokens=raw.get("default_max_tokens", DEFAULT_PLAN_MAX_TOKENS),
    )


def _build_breaker(raw: dict[str, Any] | None) -> BreakerPolicy:
    defaults = BreakerPolicy()
    raw = raw or {}
    return BreakerPolicy(
        failure_threshold=raw.get("failure_threshold", defaults.failure_threshold),
        tenant_threshold=raw.get("tenant_threshold", defaults.tenant_threshold),
        cooldown_seconds=float(raw.get("cooldown_seconds", defaults.cooldown_seconds)),
        probe_lease_seconds=float(raw.get("probe_lease_seconds", defaults.probe_lease_seconds)),
        cache_seconds=float(raw.get("cache_seconds", defaults.cache_seconds)),
    )


def build_config(raw: dict[str, Any]) -> GatewayConfig:
    """The dataclasses of a validated document (``${VAR}`` already expanded). Checks nothing: what it
    is given passed :func:`quotagate.config_models.validate_document` (at synth, or at start-up)."""
    plans = {name: _build_plan(name, p) for name, p in (raw.get("plans") or {}).items()}
    return GatewayConfig(
        plans=plans,
        models={name: _build_model(name, m) for name, m in (raw.get("models") or {}).items()},
        providers={name: _build_provider(name, p) for name, p in (raw.get("providers") or {}).items()},
        default_plan=raw.get("default_plan") or next(iter(plans), ""),
        circuit_breaker=_build_breaker(raw.get("circuit_breaker")),
        default_tenant_limits=limits_of(raw.get("default_tenant_limits")),
    )


def _load_raw() -> dict[str, Any]:
    parameter = settings.env(settings.CONFIG_PARAMETER)
    if parameter:
        from quotagate import aws

        value = aws.ssm_provider().get(parameter, transform="json", max_age=_CACHE_SECONDS)
        return dict(value)
    path = Path(settings.env(settings.CONFIG_FILE) or DEFAULT_CONFIG_FILE)
    return json.loads(path.read_text())


_cached: dict[str, tuple[float, GatewayConfig]] = {}


def load_config(force: bool = False) -> GatewayConfig:
    """The current configuration, re-read at most once a minute — the proxy's path: built from the
    document without validating it again (the synth validated the SSM parameter it wrote; local mode
    validates its file at start-up). No pydantic import, so no cold-start cost for it."""
    return load_cached("built", lambda raw: build_config(expand_variables(raw)), force)


def load_cached(kind: str, build: Callable[[dict[str, Any]], GatewayConfig], force: bool) -> GatewayConfig:
    """The configuration ``build`` made of the current document, re-read at most once a minute;
    ``kind`` names the way it was built (each way has its own cache)."""
    now = time.monotonic()
    cached = _cached.get(kind)
    if force or cached is None or now - cached[0] > _CACHE_SECONDS:
        cached = (now, build(_load_raw()))
        _cached[kind] = cached
    return cached[1]


def reset_cache() -> None:
    _cached.clear()
