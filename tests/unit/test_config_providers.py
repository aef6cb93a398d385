import pytest

from quotagate.config import ConfigError
from quotagate.config_models import parse_config


def config_with(provider: dict) -> dict:
    return {
        "providers": {"p": provider},
        "models": {"m": {"provider": "p", "upstream_model": "x"}},
        "plans": {"free": {"models": "*"}},
        "default_plan": "free",
    }


@pytest.mark.parametrize(
    ("provider", "factor"),
    [
        ({"type": "openai", "base_url": "http://h/v1"}, 1.0),
        ({"type": "anthropic", "base_url": "http://h/v1"}, 1.3),
        ({"type": "bedrock"}, 1.3),
        ({"type": "anthropic", "base_url": "http://h/v1", "prompt_token_factor": 1.5}, 1.5),
    ],
)
def test_prompt_token_factor_defaults_by_provider_type(provider, factor):
    config = parse_config(config_with(provider))
    assert config.providers["p"].prompt_token_factor == factor
    target = config.models["m"].targets[0]
    assert config.prompt_reservation(target, 100) == round(100 * factor)


def test_a_factor_below_one_would_break_the_upper_bound():
    with pytest.raises(ConfigError, match="prompt_token_factor"):
        parse_config(config_with({"type": "openai", "base_url": "http://h/v1", "prompt_token_factor": 0.8}))


def test_tenant_limits_belong_to_tenants_not_to_plans():
    raw = config_with({"type": "openai", "base_url": "http://h/v1"})
    assert parse_config({**raw, "default_tenant_limits": {"usd_per_month": 10}}).default_tenant_limits == {
        "usd_per_month": 10
    }
    raw["plans"]["free"]["tenant_limits"] = {"usd_per_month": 10}
    with pytest.raises(ConfigError, match="tenant records"):
        parse_config(raw)
