"""Gateway configuration: plans (limits), models (provider, upstream model, price) and providers.

Loaded from an SSM parameter through Powertools Parameters (cached) in AWS, or from a JSON file
locally. ``${VAR}`` in string values is replaced by the environment variable VAR, so one file can
point at a local mock server or a real provider.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quotagate import settings

LIMIT_NAMES = (
    "requests_per_minute",
    "tokens_per_minute",
    "tokens_per_day",
    "tokens_per_month",
    "usd_per_day",
    "usd_per_month",
    "max_tokens_per_request",
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


@dataclass(frozen=True)
class Price:
    input_per_million: float = 0.0
    output_per_million: float = 0.0

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


@dataclass(frozen=True)
class Provider:
    name: str
    type: str  # "openai" (OpenAI-compatible HTTP)
    base_url: str
    api_key_secret: str | None = None  # Secrets Manager name; None for keyless upstreams
    connect_timeout: float = 5.0
    read_timeout: float = 120.0


@dataclass(frozen=True)
class Model:
    name: str
    provider: str
    upstream_model: str
    price: Price = field(default_factory=Price)


@dataclass(frozen=True)
class Plan:
    name: str
    limits: dict[str, float]  # per key
    tenant_limits: dict[str, float]  # shared by all keys of a tenant
    models: tuple[str, ...] | None  # None: every model
    default_max_tokens: int


@dataclass(frozen=True)
class GatewayConfig:
    plans: dict[str, Plan]
    models: dict[str, Model]
    providers: dict[str, Provider]
    default_plan: str

    def plan(self, name: str) -> Plan | None:
        return self.plans.get(name)


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _VAR_RE.sub(lambda m: os.environ.get(m.group(1), ""), value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def parse_config(raw: dict[str, Any]) -> GatewayConfig:
    raw = _expand(raw)
    providers = {
        name: Provider(
            name=name,
            type=p.get("type", "openai"),
            base_url=p["base_url"].rstrip("/"),
            api_key_secret=p.get("api_key_secret"),
            connect_timeout=float(p.get("connect_timeout", 5.0)),
            read_timeout=float(p.get("read_timeout", 120.0)),
        )
        for name, p in raw.get("providers", {}).items()
    }
    models = {}
    for name, m in raw.get("models", {}).items():
        if m["provider"] not in providers:
            raise ConfigError(f"model '{name}' names unknown provider '{m['provider']}'")
        models[name] = Model(
            name=name,
            provider=m["provider"],
            upstream_model=m.get("upstream_model", name),
            price=Price(**m.get("price", {})),
        )
    plans = {}
    for name, p in raw.get("plans", {}).items():
        plan_models = p.get("models")
        plans[name] = Plan(
            name=name,
            limits=validate_limits(p.get("limits"), f"plans.{name}.limits"),
            tenant_limits=validate_limits(p.get("tenant_limits"), f"plans.{name}.tenant_limits"),
            models=None if plan_models in (None, "*") else tuple(plan_models),
            default_max_tokens=int(p.get("default_max_tokens", 1024)),
        )
    default_plan = raw.get("default_plan", next(iter(plans), ""))
    if default_plan not in plans:
        raise ConfigError(f"default_plan '{default_plan}' is not a plan")
    return GatewayConfig(plans=plans, models=models, providers=providers, default_plan=default_plan)


def _load_raw() -> dict[str, Any]:
    parameter = settings.env(settings.CONFIG_PARAMETER)
    if parameter:
        from aws_lambda_powertools.utilities import parameters

        value = parameters.get_parameter(parameter, transform="json", max_age=_CACHE_SECONDS)
        return dict(value)  # type: ignore[arg-type]
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
