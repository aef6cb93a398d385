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
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from quotagate import settings

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


def validate_limits(raw: Any, where: str) -> dict[str, float]:
    """Check a limits mapping; returns it with numeric values. Raises ConfigError naming the field."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object")
    limits: dict[str, float] = {}
    for name, value in raw.items():
        if name not in LIMIT_NAMES:
            raise ConfigError(f"{where}: unknown limit '{name}' (known: {', '.join(LIMIT_NAMES)})")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where}.{name} must be a non-negative number")
        limits[name] = value
    return limits


# Anthropic prompt caching, as multiples of the input price.
CACHE_WRITE_5M_FACTOR = 1.25
CACHE_WRITE_1H_FACTOR = 2.0
CACHE_READ_FACTOR = 0.1


@dataclass(frozen=True)
class Price:
    input_per_million: float = 0.0
    output_per_million: float = 0.0

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


PROVIDER_TYPES = ("openai", "anthropic", "bedrock")
# The request field that carries the output cap to a provider. OpenAI's reasoning models take only
# max_completion_tokens; many OpenAI-compatible servers (older vLLM, Ollama) honour only max_tokens.
# The Anthropic and Bedrock adapters translate either into their own field.
MaxOutputField = Literal["max_tokens", "max_completion_tokens"]
MAX_OUTPUT_FIELDS: tuple[str, ...] = get_args(MaxOutputField)
DEFAULT_MAX_OUTPUT_TOKENS = 4096
TIER_MISMATCH_POLICIES = ("refuse", "downgrade")


@dataclass(frozen=True)
class Provider:
    name: str
    type: str  # "openai" (OpenAI-compatible HTTP) | "anthropic" (Messages API) | "bedrock" (Converse)
    base_url: str  # "" for bedrock: the AWS regional endpoint
    api_key_secret: str | None = None  # Secrets Manager name; None for keyless upstreams (and bedrock)
    connect_timeout: float = 5.0
    read_timeout: float = 120.0  # default of a target's first-byte and idle timeouts
    region: str | None = None  # bedrock: the AWS region (None: the function's own region)
    # Reservations count prompts with cl100k; a provider whose tokenizer yields more tokens for the
    # same text needs a larger estimate for the reservation to stay an upper bound.
    prompt_token_factor: float = 1.0
    # How an "openai" provider sends its key: "authorization" (Bearer) or "api-key" (Azure OpenAI).
    auth_header: str = "authorization"
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
    on_tier_mismatch: str = "refuse"  # "refuse" (403) | "downgrade"
    downgrade_to: str | None = None  # another model name, for "downgrade"
    sticky: bool = False  # the first pick is a stable hash of consumer and alias
    deadline: float | None = None  # total seconds for the whole request (None: no total deadline)
    created: int | None = None  # Unix seconds shown by /v1/models (None: when this process started)

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


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _VAR_RE.sub(lambda m: os.environ.get(m.group(1), ""), value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


# -- parsing helpers: every error names the field ------------------------------------------------
def _object(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object")
    return raw


def _known_keys(raw: dict[str, Any], where: str, known: tuple[str, ...]) -> None:
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(known)})")


def _number(
    raw: dict[str, Any], name: str, where: str, *, positive: bool = False, default: float | None = None
) -> float | None:
    value = raw.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
        kind = "a positive number" if positive else "a non-negative number"
        raise ConfigError(f"{where}.{name} must be {kind}")
    return float(value)


def _positive_int(raw: dict[str, Any], name: str, where: str, default: int | None) -> Any:
    value = raw.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}.{name} must be a positive integer")
    return value


def _string(raw: dict[str, Any], name: str, where: str, default: str | None = None) -> str | None:
    value = raw.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{name} must be a non-empty string")
    return value


# cl100k (what the gateway counts with) matches OpenAI models; Claude's and other Bedrock models'
# tokenizers produce more tokens for the same English text, so their estimates get a margin.
DEFAULT_PROMPT_TOKEN_FACTORS = {"openai": 1.0, "anthropic": 1.3, "bedrock": 1.3}


def _parse_provider(name: str, raw: Any) -> Provider:
    where = f"providers.{name}"
    p = _object(raw, where)  # other fields are left to the provider adapters
    kind = p.get("type", "openai")
    if kind not in PROVIDER_TYPES:
        raise ConfigError(f"{where}.type must be one of {', '.join(PROVIDER_TYPES)}, not {kind!r}")
    base_url = p.get("base_url") or ""
    if not isinstance(base_url, str):
        raise ConfigError(f"{where}.base_url must be a string")
    if not base_url and kind != "bedrock":
        raise ConfigError(f"{where}.base_url is required for a provider of type '{kind}'")
    region = p.get("region") or None
    if region is not None and not isinstance(region, str):
        raise ConfigError(f"{where}.region must be a string")
    factor = _number(p, "prompt_token_factor", where, positive=True, default=DEFAULT_PROMPT_TOKEN_FACTORS[kind]) or 1.0
    if factor < 1.0:
        raise ConfigError(f"{where}.prompt_token_factor must be at least 1")
    auth_header = p.get("auth_header", "authorization")
    if auth_header not in ("authorization", "api-key"):
        raise ConfigError(f"{where}.auth_header must be 'authorization' or 'api-key'")
    max_output_field = p.get("max_output_field", "max_tokens")
    if max_output_field not in MAX_OUTPUT_FIELDS:
        raise ConfigError(f"{where}.max_output_field must be one of {', '.join(MAX_OUTPUT_FIELDS)}")
    return Provider(
        name=name,
        type=kind,
        base_url=base_url.rstrip("/"),
        api_key_secret=_string(p, "api_key_secret", where),
        connect_timeout=_number(p, "connect_timeout", where, positive=True, default=5.0) or 5.0,
        read_timeout=_number(p, "read_timeout", where, positive=True, default=120.0) or 120.0,
        region=region,
        prompt_token_factor=factor,
        auth_header=auth_header,
        max_output_field=max_output_field,
    )


def _parse_price(raw: Any, where: str) -> Price:
    if raw is None:
        return Price()
    p = _object(raw, where)
    _known_keys(p, where, ("input_per_million", "output_per_million"))
    return Price(
        input_per_million=_number(p, "input_per_million", where, default=0.0) or 0.0,
        output_per_million=_number(p, "output_per_million", where, default=0.0) or 0.0,
    )


_TARGET_FIELDS = (
    "provider",
    "upstream_model",
    "price",
    "weight",
    "plans",
    "timeouts",
    "max_output_tokens",
    "max_output_field",
    "image_tokens",
    "reasoning",
)
_TIMEOUT_FIELDS = ("connect", "first_byte", "idle")


def _parse_target(
    raw: Any, where: str, default_model: str, providers: dict[str, Provider], known: tuple[str, ...] = _TARGET_FIELDS
) -> Target:
    t = _object(raw, where)
    _known_keys(t, where, known)
    provider = t.get("provider")
    if provider not in providers:
        raise ConfigError(f"{where} names unknown provider {provider!r}")
    plans = t.get("plans")
    if plans is not None and (not isinstance(plans, list) or not all(isinstance(x, str) for x in plans)):
        raise ConfigError(f"{where}.plans must be a list of plan names")
    timeouts = _object(t.get("timeouts") or {}, f"{where}.timeouts")
    _known_keys(timeouts, f"{where}.timeouts", _TIMEOUT_FIELDS)
    reasoning = t.get("reasoning", False)
    if not isinstance(reasoning, bool):
        raise ConfigError(f"{where}.reasoning must be true or false")
    max_output_field = t.get("max_output_field", "max_completion_tokens" if reasoning else None)
    if max_output_field is not None and max_output_field not in MAX_OUTPUT_FIELDS:
        raise ConfigError(f"{where}.max_output_field must be one of {', '.join(MAX_OUTPUT_FIELDS)}")
    return Target(
        provider=provider,
        upstream_model=_string(t, "upstream_model", where, default_model) or default_model,
        price=_parse_price(t.get("price"), f"{where}.price"),
        weight=_number(t, "weight", where),
        plans=None if plans is None else tuple(plans),
        connect_timeout=_number(timeouts, "connect", f"{where}.timeouts", positive=True),
        first_byte_timeout=_number(timeouts, "first_byte", f"{where}.timeouts", positive=True),
        idle_timeout=_number(timeouts, "idle", f"{where}.timeouts", positive=True),
        max_output_tokens=_positive_int(t, "max_output_tokens", where, DEFAULT_MAX_OUTPUT_TOKENS),
        max_output_field=max_output_field,
        image_tokens=_positive_int(t, "image_tokens", where, None),
        reasoning=reasoning,
    )


_ALIAS_FIELDS = ("targets", "on_tier_mismatch", "downgrade_to", "sticky", "deadline", "created")


def _parse_model(name: str, raw: Any, providers: dict[str, Provider]) -> Model:
    where = f"models.{name}"
    m = _object(raw, where)
    if "targets" in m:
        _known_keys(m, where, _ALIAS_FIELDS)
        raw_targets = m["targets"]
        if not isinstance(raw_targets, list) or not raw_targets:
            raise ConfigError(f"{where}.targets must be a non-empty list")
        targets = tuple(_parse_target(t, f"{where}.targets[{i}]", name, providers) for i, t in enumerate(raw_targets))
    else:
        # The simple form: one target, written inline.
        _known_keys(m, where, (*_TARGET_FIELDS, *_ALIAS_FIELDS[1:]))
        target_fields = {k: v for k, v in m.items() if k in _TARGET_FIELDS}
        targets = (_parse_target(target_fields, where, name, providers),)
    ids = [t.id for t in targets]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}.targets lists the same provider/upstream_model twice")
    downgrade_to = _string(m, "downgrade_to", where)
    policy = m.get("on_tier_mismatch", "downgrade" if downgrade_to else "refuse")
    if policy not in TIER_MISMATCH_POLICIES:
        raise ConfigError(f"{where}.on_tier_mismatch must be one of {', '.join(TIER_MISMATCH_POLICIES)}")
    if downgrade_to is not None and policy != "downgrade":
        raise ConfigError(f"{where}.downgrade_to needs on_tier_mismatch 'downgrade'")
    sticky = m.get("sticky", False)
    if not isinstance(sticky, bool):
        raise ConfigError(f"{where}.sticky must be true or false")
    created = m.get("created")
    if created is not None and (isinstance(created, bool) or not isinstance(created, int) or created < 0):
        raise ConfigError(f"{where}.created must be a Unix time in seconds")
    return Model(
        name=name,
        targets=targets,
        on_tier_mismatch=policy,
        downgrade_to=downgrade_to,
        sticky=sticky,
        deadline=_number(m, "deadline", where, positive=True),
        created=created,
    )


def _parse_breaker(raw: Any) -> BreakerPolicy:
    if raw is None:
        return BreakerPolicy()
    where = "circuit_breaker"
    b = _object(raw, where)
    _known_keys(b, where, ("failure_threshold", "cooldown_seconds", "probe_lease_seconds", "cache_seconds"))
    defaults = BreakerPolicy()
    threshold = b.get("failure_threshold", defaults.failure_threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ConfigError(f"{where}.failure_threshold must be an integer of at least 1")
    return BreakerPolicy(
        failure_threshold=threshold,
        cooldown_seconds=_number(b, "cooldown_seconds", where, positive=True, default=defaults.cooldown_seconds)
        or defaults.cooldown_seconds,
        probe_lease_seconds=_number(
            b, "probe_lease_seconds", where, positive=True, default=defaults.probe_lease_seconds
        )
        or defaults.probe_lease_seconds,
        cache_seconds=_number(b, "cache_seconds", where, default=defaults.cache_seconds) or 0.0,
    )


def parse_config(raw: dict[str, Any]) -> GatewayConfig:
    raw = _expand(raw)
    providers = {name: _parse_provider(name, p) for name, p in _object(raw.get("providers", {}), "providers").items()}
    models = {name: _parse_model(name, m, providers) for name, m in _object(raw.get("models", {}), "models").items()}
    plans = {}
    for name, p in _object(raw.get("plans", {}), "plans").items():
        plan_models = p.get("models")
        if plan_models not in (None, "*") and (
            not isinstance(plan_models, list) or not all(isinstance(x, str) for x in plan_models)
        ):
            raise ConfigError(f'plans.{name}.models must be "*" or a list of model names')
        if "tenant_limits" in p:
            # A key's plan cannot decide what its whole tenant may spend (keys on different plans
            # would each bring their own tenant limit, and keys without one would not count).
            raise ConfigError(
                f"plans.{name}.tenant_limits is no longer supported: tenant limits live on "
                "tenant records (keys API create_tenant/update_tenant); the config's "
                "default_tenant_limits apply to tenants without a record"
            )
        plans[name] = Plan(
            name=name,
            limits=validate_limits(p.get("limits"), f"plans.{name}.limits"),
            models=None if plan_models in (None, "*") else tuple(plan_models),
            default_max_tokens=int(p.get("default_max_tokens", 1024)),
        )
    for model in models.values():
        if model.downgrade_to is not None and (model.downgrade_to not in models or model.downgrade_to == model.name):
            raise ConfigError(f"models.{model.name}.downgrade_to names unknown model {model.downgrade_to!r}")
        for i, target in enumerate(model.targets):
            unknown = sorted(set(target.plans or ()) - set(plans))
            if unknown:
                raise ConfigError(f"models.{model.name}: target {i} names unknown plan(s) {', '.join(unknown)}")
    default_plan = raw.get("default_plan", next(iter(plans), ""))
    if default_plan not in plans:
        raise ConfigError(f"default_plan '{default_plan}' is not a plan")
    return GatewayConfig(
        plans=plans,
        models=models,
        providers=providers,
        default_plan=default_plan,
        circuit_breaker=_parse_breaker(raw.get("circuit_breaker")),
        default_tenant_limits=validate_limits(raw.get("default_tenant_limits"), "default_tenant_limits"),
    )


def _load_raw() -> dict[str, Any]:
    parameter = settings.env(settings.CONFIG_PARAMETER)
    if parameter:
        from quotagate import aws

        value = aws.ssm_provider().get(parameter, transform="json", max_age=_CACHE_SECONDS)
        return dict(value)
    path = Path(settings.env(settings.CONFIG_FILE) or DEFAULT_CONFIG_FILE)
    return json.loads(path.read_text())


_cached: tuple[float, GatewayConfig] | None = None


def load_config(force: bool = False) -> GatewayConfig:
    """The current configuration, re-read at most once a minute."""
    global _cached
    now = time.monotonic()
    if force or _cached is None or now - _cached[0] > _CACHE_SECONDS:
        _cached = (now, parse_config(_load_raw()))
    return _cached[1]


def reset_cache() -> None:
    global _cached
    _cached = None
