"""A client's malformed conversation is a 400 in the caller's protocol on every provider type,
decided by the gateway: no target is called (so no target's circuit breaker hears of it) and nothing
is charged. Found by probing the endpoints as a new user would; each of these reached the model before
(OpenAI, Anthropic and Bedrock all refuse them, each in its own words)."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.integration.gateway_stack import gateway_stack, mock_providers

PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}
CONFIG = {
    "providers": mock_providers(),
    "models": {
        "via-openai": {"provider": "openai", "upstream_model": "mock-gpt", "price": PRICE},
        "via-anthropic": {"provider": "anthropic", "upstream_model": "claude-mock", "price": PRICE},
        "via-bedrock": {"provider": "bedrock", "upstream_model": "amazon.nova-mock-v1:0", "price": PRICE},
    },
    "plans": {"metered": {"limits": {"tokens_per_day": 1000000}, "models": "*", "default_max_tokens": 50}},
    "default_plan": "metered",
}
MODELS = ["via-openai", "via-anthropic", "via-bedrock"]
USER = {"role": "user", "content": "What is the weather in Paris?"}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def calls(*ids: str) -> dict:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
            for i in ids
        ],
    }


def result(call_id: str) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": "Sunny"}


BROKEN_CONVERSATIONS = {
    "a tool result that answers no call": ([USER, result("call_1")], "messages[1].tool_call_id"),
    "a tool result for another call": ([USER, calls("call_1"), result("call_2")], "messages[2].tool_call_id"),
    "a tool call left unanswered": ([USER, calls("call_1", "call_2"), result("call_1"), USER], "messages[3]"),
    "image data that is not base64": (
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}]}],
        "messages[0].content[0].image_url.url",
    ),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("mistakes"), CONFIG, token_delay=0.001) as running:
        yield running


@pytest.fixture(scope="module")
def key(stack):
    return stack.create_key(tenant="mistakes", plan="metered")


@pytest.fixture
def untouched(stack, key):
    """Asserts, after the test, that no target was called and nothing was charged."""
    calls_before = stack.mock.stats.chat_requests
    used_before = stack.quota_used(f"key#{key['key_id']}", "tokens_per_day")
    yield
    assert stack.mock.stats.chat_requests == calls_before, "the request reached a model"
    assert stack.quota_used(f"key#{key['key_id']}", "tokens_per_day") == used_before


def post(stack, key, path: str, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key['api_key']}"}
    return httpx.post(f"{stack.base_url}{path}", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case", BROKEN_CONVERSATIONS)
def test_a_broken_conversation_is_the_same_400_on_every_provider(stack, key, untouched, model, case):
    messages, param = BROKEN_CONVERSATIONS[case]
    response = post(stack, key, "/v1/chat/completions", {"model": model, "messages": messages, "tools": [WEATHER]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_value"
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("model", MODELS)
def test_a_responses_function_output_without_its_call_is_a_400(stack, key, untouched, model):
    body = {"model": model, "input": [{"type": "function_call_output", "call_id": "call_1", "output": "Sunny"}]}
    response = post(stack, key, "/v1/responses", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_value"


@pytest.mark.parametrize("model", MODELS)
def test_a_messages_tool_result_without_its_tool_use_is_an_anthropic_400(stack, key, untouched, model):
    turn = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"}]}
    response = post(stack, key, "/v1/messages", {"model": model, "max_tokens": 20, "messages": [turn]})
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_bedrock_refuses_a_conversation_that_starts_with_the_assistant_before_calling(stack, key, untouched, path):
    # Bedrock's own rule (OpenAI-compatible targets and Claude accept it): unsupported on this provider.
    opening = [{"role": "assistant", "content": "Hello, how can I help?"}, USER]
    body = {"model": "via-bedrock", "messages": opening}
    if path == "/v1/responses":
        body = {"model": "via-bedrock", "input": opening}
    response = post(stack, key, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "unsupported_for_provider"


def test_valid_image_data_still_passes(stack, key):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
    body = {"model": "via-openai", "messages": [{"role": "user", "content": [image]}]}
    assert post(stack, key, "/v1/chat/completions", body).status_code == 200


NOTHING_TO_ANSWER = {
    "an empty user message": [{"role": "user", "content": ""}],
    "an empty content array": [{"role": "user", "content": []}],
    "a system message alone": [{"role": "system", "content": "You are terse."}],
}


@pytest.mark.parametrize("model", ["via-anthropic", "via-bedrock"])
@pytest.mark.parametrize("case", NOTHING_TO_ANSWER)
def test_nothing_to_answer_is_unsupported_on_claude_and_bedrock_before_calling(stack, key, untouched, model, case):
    # OpenAI-compatible targets answer these; Anthropic and Bedrock need a non-empty user or
    # assistant turn: the same code on both, so an alias skips to a target that can serve it.
    response = post(stack, key, "/v1/chat/completions", {"model": model, "messages": NOTHING_TO_ANSWER[case]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "unsupported_for_provider"
