"""The prompt estimate counts what providers bill; the one output cap."""

from __future__ import annotations

import base64
import io
import wave

import pytest

from quotagate import tokens
from quotagate.config_models import parse_config
from quotagate.errors import GatewayError
from quotagate.logic import estimate
from quotagate.logic.chat_request import parse_chat_request
from quotagate_tools.mock import billing

CONFIG = parse_config(
    {
        "providers": {
            "oa": {"type": "openai", "base_url": "http://127.0.0.1:1/v1"},
            "an": {"type": "anthropic", "base_url": "http://127.0.0.1:1/v1"},
            "br": {"type": "bedrock"},
        },
        "models": {
            "m": {
                "targets": [
                    {"provider": "oa", "upstream_model": "a"},
                    {
                        "provider": "an",
                        "upstream_model": "b",
                        "max_output_tokens": 100,
                        "price": {"input_per_million": 3, "output_per_million": 15},
                    },
                    {"provider": "br", "upstream_model": "c", "image_tokens": 3000},
                ]
            }
        },
        "plans": {"p": {"limits": {}, "default_max_tokens": 50}},
    }
)
OA, AN, BR = CONFIG.models["m"].targets
MESSAGES = [{"role": "user", "content": "Tell me about lighthouses."}]


def prompt(body, target=OA):
    return estimate.measure(body).prompt_tokens(CONFIG.providers[target.provider], target)


def wav(seconds):
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * int(8000 * seconds))
    return base64.b64encode(out.getvalue()).decode()


def test_plain_text_is_counted_like_the_chat_format():
    assert prompt({"messages": MESSAGES}) == tokens.chat_prompt_tokens(MESSAGES)


def test_tools_functions_and_schemas_are_prompt_tokens_and_bound_the_mock_bill():
    tools = [
        {
            "type": "function",
            "function": {"name": f"f{i}", "description": "Look things up " * 20, "parameters": {"type": "object"}},
        }
        for i in range(5)
    ]
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object", "description": "word " * 50}},
    }
    for extra in ({"tools": tools}, {"functions": [t["function"] for t in tools]}, {"response_format": schema}):
        body = {"messages": MESSAGES, **extra}
        assert prompt(body) > prompt({"messages": MESSAGES}) + 50
        assert prompt(body) >= billing.openai_prompt_tokens(body)


def test_anthropic_tools_include_the_tool_system_prompt():
    body = {"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert prompt(body, AN) - prompt(body, OA) >= billing.ANTHROPIC_TOOL_SYSTEM_PROMPT


@pytest.mark.parametrize(
    ("detail", "target", "expected"),
    [("low", OA, 85), ("high", OA, 1445), (None, OA, 1445), ("low", AN, 4787), ("high", BR, 3000)],
)
def test_images_cost_their_worst_case_per_provider_and_detail(detail, target, expected):
    image = {"url": "https://example.com/a.png", **({"detail": detail} if detail else {})}
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": image}]}]}
    assert prompt(body, target) - prompt({"messages": [{"role": "user", "content": []}]}, target) == expected


CLAUDE_IMAGES = [
    # (provider type, upstream model, worst case per image): Anthropic's published tiers; models
    # from Opus 4.7, Sonnet 5 and Haiku 5.5 on take images up to 4,784 tokens (+3 for the block).
    ("anthropic", "claude-opus-4-7", 4787),
    ("anthropic", "claude-sonnet-5-5", 4787),
    ("anthropic", "claude-haiku-5-5", 4787),
    ("anthropic", "claude-opus-4-8-20261101", 4787),
    ("bedrock", "us.anthropic.claude-sonnet-5-0-v1:0", 4787),
    ("openai", "claude-opus-4-7", 4787),  # a Claude model behind an OpenAI-compatible proxy
    ("anthropic", "a-model-we-do-not-know", 4787),  # unknown: the larger bound
    ("anthropic", "claude-sonnet-4-5", 1600),
    ("anthropic", "claude-haiku-4-5-20251001", 1600),
    ("anthropic", "claude-opus-4-1", 1600),
    ("anthropic", "claude-3-5-sonnet-20241022", 1600),
    ("bedrock", "anthropic.claude-3-7-sonnet-20250219-v1:0", 1600),
    ("bedrock", "amazon.nova-pro-v1:0", 1600),
    ("openai", "gpt-4o", 1445),
]


@pytest.mark.parametrize(("provider_type", "model", "expected"), CLAUDE_IMAGES)
def test_image_bounds_follow_the_models_published_table(provider_type, model, expected):
    config = parse_config(
        {
            "providers": {"p": {"type": provider_type, "base_url": "http://127.0.0.1:1/v1"}},
            "models": {"m": {"provider": "p", "upstream_model": model}},
            "plans": {"p": {"limits": {}}},
        }
    )
    (target,) = config.models["m"].targets
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    cost = estimate.measure({"messages": [{"role": "user", "content": [image]}]})
    empty = estimate.measure({"messages": [{"role": "user", "content": []}]})
    provider = config.providers["p"]
    assert cost.prompt_tokens(provider, target) - empty.prompt_tokens(provider, target) == expected


def test_audio_is_bounded_by_its_duration_and_unreadable_audio_is_refused():
    part = {"type": "input_audio", "input_audio": {"data": wav(4.0), "format": "wav"}}
    body = {"messages": [{"role": "user", "content": [part]}]}
    assert estimate.measure(body).audio_tokens == 4 * estimate.AUDIO_TOKENS_PER_SECOND
    assert estimate.measure(body).audio_tokens >= billing.openai_prompt_tokens(body) - tokens.chat_prompt_tokens(
        [{"role": "user", "content": ""}]
    )
    for bad in (
        {"data": "!!!", "format": "wav"},
        {"data": wav(1), "format": "flac"},
        {"data": base64.b64encode(b"not a wav").decode(), "format": "wav"},
    ):
        with pytest.raises(GatewayError) as error:
            estimate.measure({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": bad}]}]})
        assert error.value.status == 400


def test_a_part_whose_cost_cannot_be_bounded_is_a_400():
    body = {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}
    with pytest.raises(GatewayError) as error:
        estimate.measure(body)
    assert error.value.status == 400 and error.value.code == estimate.UNBOUNDED_CODE
    assert error.value.param == "messages[0].content[0]"


def _request(**fields):
    import json

    return parse_chat_request(json.dumps({"model": "m", "messages": MESSAGES, **fields}).encode())


def test_one_cap_the_smaller_of_both_fields_and_never_above_the_per_request_limit():
    cost = estimate.measure({"messages": MESSAGES})
    plan = estimate.plan_output(
        CONFIG,
        _request(max_tokens=5000, max_completion_tokens=16),
        (OA, AN),
        cost,
        {"max_tokens_per_request": 64},
        {},
        50,
    )
    assert plan.caps == {OA.id: 16, AN.id: 16} and plan.output_reserve == 16
    with pytest.raises(GatewayError) as error:
        estimate.plan_output(
            CONFIG, _request(max_completion_tokens=5000), (OA,), cost, {"max_tokens_per_request": 64}, {}, 50
        )
    assert error.value.param == "max_completion_tokens" and "5000" in error.value.message


def test_the_cap_field_follows_the_provider_and_the_target():
    reasoning = parse_config(
        {
            "providers": {
                "oa": {"type": "openai", "base_url": "http://x/v1"},
                "old": {"type": "openai", "base_url": "http://x/v1", "max_output_field": "max_tokens"},
                "new": {"type": "openai", "base_url": "http://x/v1", "max_output_field": "max_completion_tokens"},
            },
            "models": {
                "o": {"provider": "oa", "upstream_model": "o3", "reasoning": True},
                "a": {"provider": "old"},
                "b": {"provider": "new"},
            },
            "plans": {"p": {}},
        }
    )
    fields = {name: reasoning.max_output_field(m.targets[0]) for name, m in reasoning.models.items()}
    assert fields == {"o": "max_completion_tokens", "a": "max_tokens", "b": "max_completion_tokens"}


def test_prompt_cache_prices_and_the_reservation_worst_case():
    from quotagate.config import Price

    price = Price(input_per_million=1_000_000, output_per_million=0)  # one dollar per input token
    assert price.cost_usd(100, 0) == 100
    assert price.cost_usd(100, 0, cache_read=50) == 50 + 5
    assert price.cost_usd(100, 0, cache_write=40) == 60 + 50
    assert price.cost_usd(100, 0, cache_write=40, cache_write_1h=40) == 60 + 80
    cached = estimate.measure(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
                }
            ]
        }
    )
    assert cached.has_cache_control
    plain = estimate.measure({"messages": MESSAGES})
    for cost in (cached, plain):
        plan = estimate.plan_output(CONFIG, _request(max_tokens=5), (OA, AN), cost, {}, {}, 50)
        anthropic_prompt = plan.prompts[AN.id]
        surcharge = AN.price.cost_usd(anthropic_prompt, 0) if cost is cached else 0
        assert surcharge > 0 or cost is plain
        assert plan.reserve_usd == pytest.approx(AN.price.cost_usd(anthropic_prompt, 7) + surcharge)


# -- Anthropic Messages requests (sent as they are to Anthropic targets) --------------------------

PNG = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
MESSAGES_BODY = {
    "system": [{"type": "text", "text": "You are a meteorologist. " * 30, "cache_control": {"type": "ephemeral"}}],
    "tools": [
        {
            "name": "get_weather",
            "description": "Weather " * 40,
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Where was this taken?"},
                PNG,
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Lyon. " * 50}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "The note says Lyon. " * 20, "signature": "c2ln" * 50},
                {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk" * 20},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Lyon"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [PNG]}]},
    ],
}


def messages_prompt(body, target=AN):
    return estimate.measure_messages(body).prompt_tokens(CONFIG.providers[target.provider], target)


def test_a_messages_request_is_bounded_above_what_anthropic_bills():
    bound = messages_prompt(MESSAGES_BODY)
    assert bound >= billing.anthropic_input_tokens(MESSAGES_BODY)
    assert bound >= 2 * estimate.CLAUDE_IMAGE_TOKENS + estimate.TOOL_SYSTEM_PROMPT_TOKENS["anthropic"]
    assert estimate.measure_messages(MESSAGES_BODY).has_cache_control
    assert not estimate.measure_messages({"messages": [{"role": "user", "content": "Hi"}]}).has_cache_control
    plain = {"messages": [{"role": "user", "content": "Tell me about lighthouses."}]}
    assert messages_prompt(plain) >= billing.anthropic_input_tokens(plain)


def test_a_pdf_document_cannot_be_bounded():
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
    with pytest.raises(GatewayError) as refused:
        estimate.measure_messages({"messages": [{"role": "user", "content": [pdf]}]})
    assert refused.value.status == 400 and refused.value.code == estimate.UNBOUNDED_CODE


def test_the_upper_bound_of_two_costs_covers_both():
    small = estimate.measure_messages({"messages": [{"role": "user", "content": "Hi"}]})
    large = estimate.measure_messages(MESSAGES_BODY)
    for a, b in ((small, large), (large, small)):
        both = a.upper_bound(b)
        for target in (OA, AN, BR):
            provider = CONFIG.providers[target.provider]
            assert both.prompt_tokens(provider, target) >= max(
                a.prompt_tokens(provider, target), b.prompt_tokens(provider, target)
            )
        assert both.has_cache_control and both.has_tools
