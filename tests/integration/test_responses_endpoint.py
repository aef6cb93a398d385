"""POST /v1/responses through the real proxy: the same admission, failover, metering and settlement
as chat completions, with the openai SDK's ``responses.create`` (streamed and not) as the client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.integration.gateway_stack import gateway_stack, mock_providers

PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}
CONFIG = {
    "providers": mock_providers(),
    "models": {
        "via-openai": {"provider": "openai", "upstream_model": "mock-gpt", "price": PRICE},
        "via-anthropic": {"provider": "anthropic", "upstream_model": "claude-mock", "price": PRICE},
        "via-bedrock": {"provider": "bedrock", "upstream_model": "amazon.nova-mock-v1:0", "price": PRICE},
        "drops": {"provider": "openai", "upstream_model": "mock-gpt@drop_after=3", "price": PRICE},
        "fails-over": {
            "targets": [
                {"provider": "openai", "upstream_model": "mock-gpt@status=503", "price": PRICE},
                {"provider": "anthropic", "upstream_model": "claude-mock", "price": PRICE},
            ]
        },
    },
    "plans": {
        "metered": {"limits": {"tokens_per_minute": 1000000}, "models": "*", "default_max_tokens": 32},
        "tiny": {"limits": {"tokens_per_minute": 40}, "models": "*", "default_max_tokens": 32},
    },
    "default_plan": "metered",
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("responses"), CONFIG, token_delay=0.002) as running:
        yield running


def new_key(stack, plan="metered"):
    return stack.create_key(tenant="responses", plan=plan)


def client_for(stack, key):
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key["api_key"], max_retries=0)


def used(stack, key):
    return stack.quota_used(f"key#{key['key_id']}", "tokens_per_minute")


@pytest.mark.parametrize("model", ["via-openai", "via-anthropic", "via-bedrock", "fails-over"])
def test_sdk_responses_create_on_every_provider_settles_exactly(stack, model):
    key = new_key(stack)
    client = client_for(stack, key)
    raw = client.responses.with_raw_response.create(
        model=model, input="Name a river.", instructions="Be brief.", max_output_tokens=6
    )
    response = raw.parse()
    assert raw.headers["x-request-id"] and raw.headers["x-quotagate-target"]
    assert response.object == "response" and response.store is False
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text and response.output[0].type == "message"
    assert response.usage.output_tokens == 6
    stack.wait_settled(raw.headers["x-request-id"])
    assert used(stack, key) == response.usage.total_tokens


@pytest.mark.parametrize("model", ["via-openai", "via-anthropic", "via-bedrock"])
def test_sdk_stream_has_typed_events_and_settles_exactly(stack, model):
    key = new_key(stack)
    client = client_for(stack, key)
    events = list(
        client.responses.create(model=model, input="Tell me about rivers.", max_output_tokens=12, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens == 12
    assert final.id == events[0].response.id
    for _ in range(100):  # settled before the last event was sent; the SDK has read it all
        if used(stack, key) == final.usage.total_tokens:
            break
    assert used(stack, key) == final.usage.total_tokens


def test_a_function_tool_round_trip(stack):
    client = client_for(stack, new_key(stack))
    first = client.responses.create(
        model="via-anthropic",
        input="What is the weather in Oslo?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and "city" in json.loads(calls[0].arguments)
    second = client.responses.create(
        model="via-anthropic",
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "What is the weather in Oslo?"},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Rain, 7 degrees."},
        ],
    )
    assert second.status == "completed" and second.output_text
    assert [item.type for item in second.output] == ["message"]


def test_a_stream_broken_after_the_first_byte_ends_with_response_failed(stack):
    key = new_key(stack)
    with httpx.stream(
        "POST",
        f"{stack.base_url}/v1/responses",
        timeout=30,
        headers={"authorization": f"Bearer {key['api_key']}"},
        json={"model": "drops", "input": "hi", "stream": True},
    ) as response:
        assert response.status_code == 200
        body = response.read().decode()
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1]["response"]["status"] == "failed"
    assert "event: response.failed\n" in body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "via-openai", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "via-openai", "input": "hi", "conversation": "conv_1"}, "conversation"),
        ({"model": "via-openai", "input": "hi", "background": True}, "background"),
        ({"model": "via-openai", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"model": "via-openai", "input": "hi", "tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"model": "via-openai"}, "input"),
        ({"model": "via-openai", "input": "hi", "max_output_tokens": -1}, "max_output_tokens"),
    ],
)
def test_invalid_or_stateful_requests_cost_nothing_and_reach_no_model(stack, body, param):
    key = new_key(stack)
    before = stack.mock.stats.snapshot()["chat_requests"]
    response = httpx.post(
        f"{stack.base_url}/v1/responses", json=body, timeout=30, headers={"authorization": f"Bearer {key['api_key']}"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert stack.mock.stats.snapshot()["chat_requests"] == before
    assert used(stack, key) == 0


def test_a_request_larger_than_the_limit_is_a_400_naming_max_output_tokens(stack):
    client = client_for(stack, new_key(stack, plan="tiny"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="via-openai", input="hi", max_output_tokens=500)
    assert caught.value.code == "request_too_large_for_limit"
    assert "max_output_tokens" in caught.value.message
