"""Price modifiers: the price table's fields, what a request's fields reserve, what a served request
settles at (quotagate.logic.pricing)."""

from __future__ import annotations

import pytest

from quotagate.config import ConfigError
from quotagate.config_models import parse_config
from quotagate.errors import GatewayError
from quotagate.logic import pricing
from quotagate.logic.metering import Usage

PRICE = {
    "input_per_million": 2.5,
    "output_per_million": 10,
    "audio_input_per_million": 40,
    "audio_output_per_million": 80,
    "service_tiers": {"priority": 1.75, "flex": 0.5},
    "inference_geos": {"us": 1.1},
    "fast_mode": 6,
    "tool_calls_usd": {"web_search": 0.025},
}


def config(price: dict) -> object:
    return parse_config(
        {
            "providers": {"oa": {"type": "openai", "base_url": "http://127.0.0.1:1/v1"}},
            "models": {"m": {"provider": "oa", "price": price}},
            "plans": {"p": {}},
        }
    )


def listed():
    return config(PRICE).models["m"].price  # type: ignore[attr-defined]


def plain():
    return config({"input_per_million": 2.5, "output_per_million": 10}).models["m"].price  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("service_tiers", {"priority": 0}, "price.service_tiers.priority: must be greater than 0"),
        ("service_tiers", {"Priority Tier": 2}, "price.service_tiers.Priority Tier.[key]"),
        ("inference_geos", {"us": float("nan")}, "price.inference_geos.us"),
        ("fast_mode", -1, "price.fast_mode: must be greater than 0"),
        ("tool_calls_usd", {"websearch": 0.01}, "price.tool_calls_usd.websearch.[key]: must be 'web_search' or"),
        ("audio_output_per_million", "80", "price.audio_output_per_million"),
    ],
)
def test_a_bad_price_modifier_is_a_config_error_naming_it(field, value, message):
    with pytest.raises(ConfigError) as error:
        config({**PRICE, field: value})
    assert message in str(error.value)


def test_the_request_factor_multiplies_tier_geography_and_speed():
    price = listed()
    asked = pricing.PriceModifiers(frozenset({"openai"}), service_tier="priority", inference_geo="us", fast=True)
    assert pricing.request_factor(asked, price, "oa/m") == pytest.approx(1.75 * 1.1 * 6)
    standard = pricing.PriceModifiers(frozenset({"openai"}), service_tier="auto", inference_geo="global")
    assert pricing.request_factor(standard, price, "oa/m") == 1.0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"service_tier": "priority"}, "service_tier"),
        ({"service_tier": "scale"}, "service_tier"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"web_search_options": {}}, "web_search_options"),
    ],
)
def test_a_chat_field_the_price_does_not_carry_is_refused_naming_it(body, param):
    modifiers = pricing.chat_modifiers({"messages": [], **body})
    with pytest.raises(GatewayError) as error:
        pricing.target_pricing(modifiers, plain(), "openai", "oa/m")
    assert error.value.param == param and error.value.code == pricing.UNPRICED_CODE
    assert f"'{param}'" in error.value.message
    # A target that gets the translation without the field prices it at its plain prices.
    assert pricing.target_pricing(modifiers, plain(), "anthropic", "an/m").factor == 1.0


def test_an_audio_answer_reserves_at_the_dearer_output_price_and_a_search_its_fee():
    modifiers = pricing.chat_modifiers({"modalities": ["text", "audio"], "web_search_options": {}})
    priced = pricing.target_pricing(modifiers, listed(), "openai", "oa/m")
    assert priced.reserve_usd(listed(), 100, 0, 50) == pytest.approx((100 * 2.5 + 50 * 80) / 1e6 + 0.025)
    assert "modalities" in modifiers.hidden_output


def test_reasoning_and_prediction_are_hidden_output_and_a_prediction_counts_beyond_the_cap():
    modifiers = pricing.chat_modifiers(
        {"reasoning_effort": "low", "prediction": {"type": "content", "content": "x " * 50}}
    )
    assert set(modifiers.hidden_output) == {"reasoning_effort", "prediction"}
    assert modifiers.extra_output_tokens >= 50
    assert pricing.chat_modifiers({"reasoning_effort": "none"}).hidden_output == ()


def test_settlement_prices_audio_tokens_the_reported_tier_and_the_search_fee():
    usage = Usage(100, 60, "provider", audio_prompt_tokens=40, audio_completion_tokens=50, service_tier="flex")
    modifiers = pricing.chat_modifiers({"service_tier": "auto", "web_search_options": {}})
    cost = pricing.settled_usd(listed(), "openai", usage, modifiers)
    tokens_usd = (60 * 2.5 + 40 * 40 + 10 * 10 + 50 * 80) / 1e6
    assert cost == pytest.approx(tokens_usd * 0.5 + 0.025)


def test_settlement_uses_the_tier_asked_for_when_the_provider_reports_none_or_an_unlisted_one():
    modifiers = pricing.chat_modifiers({"service_tier": "priority"})
    for reported in (None, "scale"):
        usage = Usage(100, 10, "provider", service_tier=reported)
        assert pricing.settled_usd(listed(), "openai", usage, modifiers) == pytest.approx((250 + 100) * 1.75 / 1e6)


def test_a_target_that_never_answered_bills_no_search_fee():
    modifiers = pricing.chat_modifiers({"web_search_options": {}})
    assert pricing.settled_usd(listed(), "openai", Usage(0, 0, "counted"), modifiers) == 0.0


def test_messages_fields_apply_to_anthropic_targets_only():
    modifiers = pricing.messages_modifiers({"inference_geo": "us", "speed": "fast", "service_tier": "standard_only"})
    assert modifiers.applies("anthropic") and not modifiers.applies("openai")
    assert pricing.request_factor(modifiers, listed(), "an/m") == pytest.approx(1.1 * 6)
    usage = Usage(100, 10, "provider")
    assert pricing.settled_usd(listed(), "openai", usage, modifiers) == pytest.approx(350 / 1e6)
    assert pricing.settled_usd(listed(), "anthropic", usage, modifiers) == pytest.approx(350 * 1.1 * 6 / 1e6)


def test_each_body_is_priced_on_the_target_types_that_receive_it():
    native = pricing.messages_modifiers({"inference_geo": "us"})
    translated = pricing.chat_modifiers({"messages": []})
    merged = native.merge(translated)
    assert merged.for_type("anthropic").inference_geo == "us"
    assert merged.for_type("openai").inference_geo is None
    assert merged.for_type("bedrock") == pricing.NO_MODIFIERS
    # An OpenAI target whose price has no geography is not refused for a field it never receives.
    assert pricing.target_pricing(merged, plain(), "openai", "oa/m").factor == 1.0
