"""A cap too large for a token limit, on providers counted with a token factor (Claude, Bedrock)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.integration.gateway_stack import gateway_stack, mock_providers

PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}
CONFIG = {
    "providers": mock_providers(),
    "models": {
        "via-anthropic": {"provider": "anthropic", "upstream_model": "claude-mock", "price": PRICE},
        "via-bedrock": {"provider": "bedrock", "upstream_model": "amazon.nova-mock-v1:0", "price": PRICE},
    },
    "plans": {"small": {"limits": {"tokens_per_day": 1000}, "models": "*", "default_max_tokens": 50}},
    "default_plan": "small",
}
MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("cap-vs-limit"), CONFIG, token_delay=0.001) as running:
        yield running


@pytest.mark.parametrize("model", ["via-anthropic", "via-bedrock"])
def test_a_short_prompt_with_a_large_cap_is_told_to_lower_max_tokens_to_a_value_that_passes(stack, model):
    """The provider's token factor scales the output bound: that share is output, not prompt. The
    400 names max_tokens (not the messages) and its advice is accepted."""
    key = stack.create_key(tenant=f"cap-{model}", plan="small")
    headers = {"authorization": f"Bearer {key['api_key']}"}
    body = {"model": model, "messages": MESSAGES, "max_tokens": 4000}
    refused = httpx.post(f"{stack.base_url}/v1/chat/completions", headers=headers, json=body, timeout=30)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "request_too_large_for_limit" and error["param"] == "max_tokens", error
    match = re.search(r"Lower max_tokens to at most (\d+)", error["message"])
    assert match, error["message"]
    advised = int(match.group(1))
    assert 0 < advised < 1000
    accepted = httpx.post(
        f"{stack.base_url}/v1/chat/completions", headers=headers, json={**body, "max_tokens": advised}, timeout=30
    )
    assert accepted.status_code == 200, accepted.text
