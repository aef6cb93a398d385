"""max_concurrent_requests through the real proxy: slow streams hold a slot until they settle."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.gateway_stack import gateway_stack

MESSAGES = [{"role": "user", "content": "Tell me about lighthouses."}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # 50 ms per token: a 60-token answer streams for about 3 s.
    with gateway_stack(tmp_path_factory.mktemp("concurrency"), token_delay=0.05) as running:
        yield running


def open_stream(client: httpx.Client, stack, api_key: str):
    body = {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 80, "stream": True, "mock_reply_tokens": 60}
    request = client.build_request(
        "POST", f"{stack.base_url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {api_key}"}
    )
    return client.send(request, stream=True)


@pytest.mark.parametrize("scope", ["key", "tenant"])
def test_a_third_concurrent_stream_is_refused_until_one_finishes(stack, scope):
    tenant = f"concurrent-{scope}"
    if scope == "key":
        keys = [stack.create_key(tenant=tenant, limits={"max_concurrent_requests": 2})] * 3
    else:
        created = stack.invoke_keys(
            {"action": "create_tenant", "tenant": tenant, "limits": {"max_concurrent_requests": 2}}
        )
        assert created["ok"], created
        keys = [stack.create_key(tenant=tenant, consumer=c) for c in "abc"]  # one key each
    with httpx.Client(timeout=30) as client:
        first = open_stream(client, stack, keys[0]["api_key"])
        second = open_stream(client, stack, keys[1]["api_key"])
        try:
            assert first.status_code == second.status_code == 200
            third = open_stream(client, stack, keys[2]["api_key"])
            third.read()
            assert third.status_code == 429
            error = third.json()["error"]
            assert error["code"] == "rate_limit_exceeded" and "max_concurrent_requests" in error["message"]
            assert third.headers["retry-after"] == "1"
            first.read()  # the whole stream: it settles before its response completes
        finally:
            first.close()
        stack.wait_settled(first.headers["x-quotagate-request-id"])
        fourth = open_stream(client, stack, keys[2]["api_key"])
        try:
            assert fourth.status_code == 200
        finally:
            fourth.read()
            fourth.close()
            second.read()
            second.close()
    pk = f"key#{keys[0]['key_id']}" if scope == "key" else f"tenant#{tenant}"
    stack.wait_settled(fourth.headers["x-quotagate-request-id"])
    stack.wait_settled(second.headers["x-quotagate-request-id"])
    assert stack.quota_used(pk, "max_concurrent_requests") == 0
