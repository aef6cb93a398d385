"""Wrong types at depth through the whole local gateway (emulator, authorizer, real proxy, moto, mock
model): a JSON array or object where the protocol wants a string is a 400 in the caller's protocol that
names the path, costs nothing and reaches no model — never a 500 (issue 16: nine such bodies gave
``internal_error``)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.gateway_stack import gateway_stack, mock_providers

pytestmark = pytest.mark.timeout(120)

CONFIG = {
    "providers": mock_providers(),
    "models": {
        "via-openai": {"provider": "openai", "upstream_model": "mock-gpt"},
        "via-anthropic": {"provider": "anthropic", "upstream_model": "claude-mock"},
        "via-bedrock": {"provider": "bedrock", "upstream_model": "amazon.nova-mock-v1:0"},
    },
    "plans": {"pro": {"limits": {"tokens_per_day": 100000}, "models": "*", "default_max_tokens": 16}},
    "default_plan": "pro",
}
HI = {"role": "user", "content": "hi"}
TOOL = {"name": "f", "input_schema": {"type": "object"}}

# (path, body, the path the error must name); each gave 500 internal_error before.
WRONG_TYPES = {
    "messages role []": (
        "/v1/messages",
        {"model": "via-anthropic", "max_tokens": 8, "messages": [{"role": [], "content": "hi"}]},
        "messages.0.role",
    ),
    "messages role {}": (
        "/v1/messages",
        {"model": "via-openai", "max_tokens": 8, "messages": [{"role": {}, "content": "hi"}]},
        "messages.0.role",
    ),
    "count_tokens role []": (
        "/v1/messages/count_tokens",
        {"model": "via-anthropic", "messages": [{"role": [], "content": "hi"}]},
        "messages.0.role",
    ),
    "count_tokens role {}": (
        "/v1/messages/count_tokens",
        {"model": "via-anthropic", "messages": [{"role": {}, "content": "hi"}]},
        "messages.0.role",
    ),
    "thinking type []": (
        "/v1/messages",
        {"model": "via-anthropic", "max_tokens": 8, "messages": [HI], "thinking": {"type": []}},
        "thinking.type",
    ),
    "tool_choice name []": (
        "/v1/messages",
        {
            "model": "via-anthropic",
            "max_tokens": 8,
            "messages": [HI],
            "tools": [TOOL],
            "tool_choice": {"type": "tool", "name": []},
        },
        "tool_choice.name",
    ),
    "chat content type []": (
        "/v1/chat/completions",
        {"model": "via-openai", "messages": [{"role": "user", "content": [{"type": [], "text": "hi"}]}]},
        "messages[0].content[0].type",
    ),
    "chat content type [] streamed": (
        "/v1/chat/completions",
        {
            "model": "via-openai",
            "stream": True,
            "messages": [{"role": "user", "content": [{"type": [], "text": "hi"}]}],
        },
        "messages[0].content[0].type",
    ),
    "responses input role []": (
        "/v1/responses",
        {"model": "via-openai", "input": [{"role": [], "content": "hi"}]},
        "input[0].role",
    ),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("wire-types"), CONFIG, token_delay=0.0) as running:
        yield running


@pytest.fixture(scope="module")
def api_key(stack):
    return stack.create_key(tenant="wire-types", plan="pro")["api_key"]


def upstream_calls(stack) -> int:
    return sum(count for name, count in stack.mock.stats.snapshot().items() if name.endswith("_requests"))


@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_a_wrong_type_at_depth_is_a_400_naming_its_path(stack, api_key, case):
    path, body, where = WRONG_TYPES[case]
    calls = upstream_calls(stack)
    response = httpx.post(
        f"{stack.base_url}{path}",
        content=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, (response.status_code, response.text)
    error = response.json()
    if path.startswith("/v1/messages"):
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
        assert error["error"]["message"].startswith(f"{where}:"), error
    else:
        assert error["error"]["param"] == where, error
        assert where in error["error"]["message"], error
    assert upstream_calls(stack) == calls
