"""``POST /v1/embeddings`` through the whole local stack keeps the rules of chat completions: the
gateway's request cap ends it (and settles it), and an upstream's Retry-After is waited for."""

import time

import httpx
import pytest

from tests.integration.gateway_stack import gateway_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("embeddings-pipeline"), max_request_seconds=1.5) as running:
        yield running


def post_embeddings(stack, key, **fields):
    return httpx.post(
        f"{stack.base_url}/v1/embeddings",
        json={"model": "mock-gpt", "input": "a sentence to embed", **fields},
        timeout=30,
        headers={"authorization": f"Bearer {key['api_key']}"},
    )


def test_an_embeddings_request_longer_than_the_request_cap_is_ended_and_settled(stack):
    key = stack.create_key(tenant="slow-embeddings")
    started = time.monotonic()
    # The mock answers after 4 s (within the provider's 5 s read timeout); the cap is 1.5 s.
    response = post_embeddings(stack, key, mock_fault="delay_first_byte=4")
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert time.monotonic() - started < 3.5
    item = stack.wait_settled(response.headers["x-quotagate-request-id"])
    assert item["usage"]["prompt_tokens"] == 0
    assert stack.quota_used(f"key#{key['key_id']}", "tokens_per_minute") == 0


def test_an_upstream_retry_after_is_waited_for_as_chat_does(stack):
    key = stack.create_key(tenant="limited-embeddings")
    stack.mock.stats.reset()
    response = post_embeddings(stack, key, mock_fault="status=429&retry_after=0.2")
    assert response.status_code == 429
    calls = [r for r in stack.mock.stats.recent_requests if r.get("endpoint") == "embeddings"]
    assert len(calls) == 3  # the first try and two Retry-After rounds, like chat completions
