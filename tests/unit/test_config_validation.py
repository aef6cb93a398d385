"""Every field of the configuration file is checked: a bad value, a wrong type or an unknown field is
a ConfigError naming the path of the field, never silently accepted and never a bare ValueError,
KeyError or AttributeError."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from quotagate.config import DEFAULT_CONFIG_FILE, ConfigError, UnknownFieldsPolicy
from quotagate.config_models import parse_config

BASE: dict[str, Any] = {
    "default_plan": "free",
    "default_tenant_limits": {"usd_per_month": 10},
    "providers": {
        "openai": {"type": "openai", "base_url": "http://127.0.0.1:1/v1"},
        "bedrock": {"type": "bedrock", "region": "eu-west-1"},
    },
    "circuit_breaker": {"failure_threshold": 5},
    "models": {
        "small": {"provider": "openai", "upstream_model": "gpt-4o-mini", "price": {"input_per_million": 0.15}},
        "chat": {
            "targets": [
                {"provider": "openai", "upstream_model": "gpt-4o", "timeouts": {"connect": 2}},
                {"provider": "bedrock", "upstream_model": "nova", "plans": ["pro"]},
            ],
            "on_tier_mismatch": "downgrade",
            "downgrade_to": "small",
        },
    },
    "plans": {
        "free": {"limits": {"requests_per_minute": 20}, "models": ["small"], "default_max_tokens": 512},
        "pro": {"limits": {"usd_per_day": 50}, "models": "*", "default_max_tokens": 2048},
    },
}


def with_value(path: str, value: Any) -> dict[str, Any]:
    """BASE with the field at the dotted ``path`` set to ``value`` (``[i]`` indexes a list)."""
    raw = copy.deepcopy(BASE)
    *parents, last = path.replace("[", ".[").split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    if last.startswith("["):
        node[int(last[1:-1])] = value
    else:
        node[last] = value
    return raw


def test_the_base_and_the_shipped_default_config_are_valid():
    config = parse_config(copy.deepcopy(BASE))
    assert config.plans["pro"].default_max_tokens == 2048
    parse_config(json.loads(DEFAULT_CONFIG_FILE.read_text()))


BAD_VALUES = [
    # plans
    ("plans.pro.default_max_tokens", -5),
    ("plans.pro.default_max_tokens", 0),
    ("plans.pro.default_max_tokens", 1.9),
    ("plans.pro.default_max_tokens", "abc"),
    ("plans.pro.default_max_tokens", "2048"),
    ("plans.pro.default_max_tokens", True),
    ("plans.pro.default_max_tokens", None),
    ("plans.pro.default_max_token", 100),  # a typo of a plan field
    ("plans.pro.limits.usd_per_day", float("nan")),
    ("plans.pro.limits.usd_per_day", float("inf")),
    ("plans.pro.limits.requests_per_minute", 2.5),  # a count of requests is a whole number
    ("plans.pro.limits.max_concurrent_requests", 1.5),
    ("plans.pro.models", "all"),
    ("plans.pro.models", [1]),
    ("plans.pro", 5),
    ("plans.pro", None),
    ("plans", []),
    # top level
    ("default_plna", "pro"),  # a typo of a top-level field
    ("modles", {}),
    ("default_plan", 5),
    ("default_tenant_limits.usd_per_month", float("nan")),
    ("default_tenant_limits", []),
    # providers
    ("providers.openai.base_url", 5),
    ("providers.openai.base_url", "api.openai.com/v1"),  # no scheme
    ("providers.openai.connect_timeout", 0),
    ("providers.openai.connect_timeout", float("inf")),
    ("providers.openai.read_timeout", "30"),
    ("providers.openai.read_timeout", float("nan")),
    ("providers.openai.prompt_token_factor", float("nan")),
    ("providers.openai.auth_header", "x-api-key"),
    ("providers.openai.max_output_field", "max_output_tokens"),
    ("providers.openai.api_key_secret", ""),
    ("providers.openai.api_key_secret", 5),
    ("providers.openai.api_key_sercet", "quotagate/providers/x"),  # a typo of a provider field
    ("providers.bedrock.region", 5),
    ("providers.bedrock.type", 5),
    ("providers.openai", "http://h/v1"),
    # models and targets
    ("models.small.price.input_per_million", float("nan")),
    ("models.small.price.input_per_million", -1),
    ("models.small.price.output_per_million", "0.6"),
    ("models.small.upstream_model", ""),
    ("models.small.upstream_model", 5),
    ("models.small.max_output_tokens", 0),
    ("models.small.max_output_tokens", 10.5),
    ("models.small.image_tokens", -1),
    ("models.small.weight", float("nan")),
    ("models.small.reasoning", "yes"),
    ("models.small.created", -1),
    ("models.small.created", 1.5),
    ("models.chat.deadline", float("inf")),
    ("models.chat.deadline", float("nan")),
    ("models.chat.sticky", 1),
    ("models.chat.targets[0].timeouts.connect", float("nan")),
    ("models.chat.targets[0].timeouts.idle", -1),
    ("models.chat.targets[0].timeouts", 5),
    ("models.chat.targets[0].plans", "pro"),
    ("models.chat.targets[0].provider", 5),
    ("models.chat.targets[0]", "openai"),
    ("models.chat.targets", {"provider": "openai"}),
    ("models.chat.on_tier_mismatch", 5),
    ("models.chat.unknown_fields", "ignore"),
    ("models.small.unknown_fields", 1),
    ("models.small", 5),
    # circuit breaker
    ("circuit_breaker.failure_threshold", 2.5),
    ("circuit_breaker.cooldown_seconds", float("nan")),
    ("circuit_breaker.cache_seconds", -1),
    ("circuit_breaker.probe_lease_seconds", 0),
    ("circuit_breaker", 5),
]


@pytest.mark.parametrize(("path", "value"), BAD_VALUES, ids=[f"{p}={v!r}" for p, v in BAD_VALUES])
def test_a_bad_field_is_a_config_error_naming_its_path(path, value):
    with pytest.raises(ConfigError) as refused:
        parse_config(with_value(path, value))
    # The error names the field: its full dotted path (a list item by its index).
    assert path in str(refused.value), str(refused.value)


@pytest.mark.parametrize("raw", [[], "config", 5, None])
def test_a_config_that_is_not_an_object_is_a_config_error(raw):
    with pytest.raises(ConfigError, match="object"):
        parse_config(raw)


def test_every_bad_field_is_reported_at_once():
    raw = with_value("plans.pro.default_max_tokens", 0)
    raw["plans"]["free"]["default_max_tokens"] = -1
    with pytest.raises(ConfigError) as refused:
        parse_config(raw)
    assert "plans.pro.default_max_tokens" in str(refused.value)
    assert "plans.free.default_max_tokens" in str(refused.value)


def test_unknown_fields_is_drop_unless_a_model_says_refuse():
    config = parse_config(with_value("models.chat.unknown_fields", "refuse"))
    assert config.models["chat"].unknown_fields == UnknownFieldsPolicy.REFUSE
    assert config.models["small"].unknown_fields == UnknownFieldsPolicy.DROP


def test_good_values_keep_their_meaning():
    raw = with_value("plans.pro.default_max_tokens", 1)
    raw["plans"]["pro"]["limits"] = {"usd_per_day": 0.5, "requests_per_minute": 0, "tokens_per_day": None}
    config = parse_config(raw)
    assert config.plans["pro"].default_max_tokens == 1
    # A null limit is no limit; 0 blocks.
    assert config.plans["pro"].limits == {"usd_per_day": 0.5, "requests_per_minute": 0}
    assert parse_config(with_value("plans.pro.default_max_tokens", 2048)).plans["pro"].default_max_tokens == 2048
    del raw["plans"]["pro"]["default_max_tokens"]
    assert parse_config(raw).plans["pro"].default_max_tokens == 1024
