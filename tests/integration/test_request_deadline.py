"""The gateway ends every request before the Lambda timeout would, so settlement always runs."""

import json

import httpx
import pytest

from quotagate import tokens
from tests.integration.gateway_stack import gateway_stack

MESSAGES = [{"role": "user", "content": "Take your time."}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("deadline"), max_request_seconds=3.0) as running:
        yield running


def test_a_stream_longer_than_the_request_limit_ends_with_an_error_event_and_is_settled(stack):
    key = stack.create_key(tenant="slow-stream")
    # A 10 s stream against a 3 s limit: room for a slow first byte on a loaded machine.
    body = {
        "model": "mock-gpt",
        "messages": MESSAGES,
        "stream": True,
        "max_tokens": 100,
        "mock_reply_tokens": 100,
        "mock_token_delay": 0.1,
    }
    response = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json=body,
        timeout=30,
        headers={"authorization": f"Bearer {key['api_key']}"},
    )
    assert response.status_code == 200
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "deadline_exceeded"
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    assert 0 < tokens.count_text(streamed) < 100
    item = stack.wait_settled(response.headers["x-quotagate-request-id"])
    used = stack.quota_used(f"key#{key['key_id']}", "tokens_per_minute")
    assert used == item["usage"]["prompt_tokens"] + item["usage"]["completion_tokens"]
    assert used < tokens.chat_prompt_tokens(MESSAGES) + 100, "the unused reservation was refunded"
