"""Exact quotas through the real proxy: concurrency, settlement on every ending, 429s and headers.

The moto server handles one call at a time, like DynamoDB's per-item atomicity, so any overshoot
seen here would be a real race in the gateway."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import httpx
import pytest

from quotagate import tokens
from quotagate.quota.service import RETRY_JITTER_SECONDS
from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack

MESSAGES = [{"role": "user", "content": "Count the lighthouses on the coast."}]
PRICE_IN, PRICE_OUT = 1.0, 2.0  # USD per million tokens of mock-gpt in TEST_CONFIG
PLANS = {
    **TEST_CONFIG["plans"],
    "tpm-1000": {"limits": {"tokens_per_minute": 1000}, "models": "*", "default_max_tokens": 64},
    "usd-day": {"limits": {"usd_per_day": 0.0017}, "models": "*", "default_max_tokens": 64},
    "no-limits": {"limits": {}, "models": "*", "default_max_tokens": 64},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("quota"), {"plans": PLANS}, token_delay=0.005) as running:
        yield running


def post(stack, api_key, body, timeout=60):
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json=body,
        timeout=timeout,
        headers={"authorization": f"Bearer {api_key}"},
    )


def micro_usd(prompt, completion):
    return math.ceil(round((prompt * PRICE_IN + completion * PRICE_OUT) / 1e6 * 1e6, 6))


def away_from_minute_boundary():
    # A burst that straddles two minute windows is legitimately admitted in both: keep it in one.
    while time.time() % 60 > 45:
        time.sleep(0.5)


def burst(stack, api_keys, count):
    """``count`` simultaneous requests (max_tokens 100, replies of varying length), round-robin keys."""

    def one(i):
        body = {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 100, "mock_reply_tokens": 20 + (i * 7) % 81}
        return post(stack, api_keys[i % len(api_keys)], body)

    before = stack.mock.stats.snapshot()["chat_requests"]
    away_from_minute_boundary()
    with ThreadPoolExecutor(max_workers=count) as pool:
        responses = list(pool.map(one, range(count)))
    upstream_calls = stack.mock.stats.snapshot()["chat_requests"] - before
    admitted = [r for r in responses if r.status_code == 200]
    rejected = [r for r in responses if r.status_code != 200]
    assert all(r.status_code == 429 for r in rejected), {r.status_code for r in rejected}
    assert upstream_calls == len(admitted), "a rejected request reached the upstream"
    return admitted, rejected


def test_fifty_concurrent_requests_never_overshoot_tokens_per_minute(stack):
    key = stack.create_key(tenant="burst-tokens", plan="tpm-1000")
    admitted, rejected = burst(stack, [key["api_key"]], 50)
    reserved_each = tokens.chat_prompt_tokens(MESSAGES) + 100
    # At least as many as fit at once; more only when early finishers refunded their unused tokens.
    assert len(admitted) >= 1000 // reserved_each
    assert rejected and all(r.json()["error"]["type"] == "tokens" for r in rejected)
    actual = sum(r.json()["usage"]["total_tokens"] for r in admitted)
    assert actual <= 1000
    assert stack.quota_used(f"key#{key['key_id']}", "tokens_per_minute") == actual


def test_fifty_concurrent_requests_never_overshoot_usd_per_day(stack):
    key = stack.create_key(tenant="burst-usd", plan="usd-day")
    admitted, rejected = burst(stack, [key["api_key"]], 50)
    reserved_each = micro_usd(tokens.chat_prompt_tokens(MESSAGES), 100)
    assert len(admitted) >= 1700 // reserved_each
    assert rejected and all(r.json()["error"]["code"] == "insufficient_quota" for r in rejected)
    spent = sum(micro_usd(r.json()["usage"]["prompt_tokens"], r.json()["usage"]["completion_tokens"]) for r in admitted)
    assert spent <= 1700
    assert stack.quota_used(f"key#{key['key_id']}", "usd_per_day") == spent


def test_a_tenant_record_is_one_window_shared_by_keys_on_three_plans(stack):
    created = stack.invoke_keys(
        {"action": "create_tenant", "tenant": "shared-tenant", "limits": {"tokens_per_minute": 1000}}
    )
    assert created["ok"], created
    # Three plans: a small one, a large one and one without any limit; none of them decides
    # what the tenant may spend.
    keys = [
        stack.create_key(tenant="shared-tenant", consumer="a", plan="tpm-1000"),
        stack.create_key(tenant="shared-tenant", consumer="b", plan="free"),
        stack.create_key(tenant="shared-tenant", consumer="c", plan="no-limits"),
    ]
    # The unlimited plan's request first, so it is surely admitted (which of the burst's 51 are
    # admitted is a race: all of one key's could lose it); same minute as the burst.
    while time.time() % 60 > 40:
        time.sleep(0.5)
    unlimited = post(stack, keys[2]["api_key"], {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 100})
    assert unlimited.status_code == 200
    admitted, rejected = burst(stack, [k["api_key"] for k in keys], 51)
    reserved_each = tokens.chat_prompt_tokens(MESSAGES) + 100
    assert len(admitted) >= 1000 // reserved_each - 1 and rejected
    actual = sum(r.json()["usage"]["total_tokens"] for r in [unlimited, *admitted])
    assert actual <= 1000
    # Every key's requests were counted in the tenant's window, the unlimited plan's too.
    assert stack.quota_used("tenant#shared-tenant", "tokens_per_minute") == actual


def test_a_tenant_without_a_record_gets_the_default_tenant_limits(tmp_path):
    overrides = {"plans": PLANS, "default_tenant_limits": {"requests_per_minute": 2}}
    with gateway_stack(tmp_path, overrides) as running:
        keys = [
            running.create_key(tenant="no-record", consumer=c, plan=p) for c, p in (("a", "free"), ("b", "no-limits"))
        ]
        away_from_minute_boundary()
        body = {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 5}
        statuses = [post(running, keys[i % 2]["api_key"], body).status_code for i in range(3)]
        assert statuses == [200, 200, 429]
        assert running.quota_used("tenant#no-record", "requests_per_minute") == 2


def wait_settled(stack, response):
    return stack.wait_settled(response.headers["x-quotagate-request-id"])


def test_upstream_error_refunds_every_token(stack):
    key = stack.create_key(tenant="settle-error")
    response = post(stack, key["api_key"], {"model": "mock-500", "messages": MESSAGES, "max_tokens": 50})
    assert response.status_code == 502
    wait_settled(stack, response)
    assert stack.quota_used(f"key#{key['key_id']}", "tokens_per_minute") == 0
    assert stack.quota_used(f"key#{key['key_id']}", "requests_per_minute") == 1


def test_mid_stream_drop_charges_what_was_streamed(stack):
    key = stack.create_key(tenant="settle-drop")
    response = post(
        stack, key["api_key"], {"model": "mock-drop", "messages": MESSAGES, "stream": True, "max_tokens": 50}
    )
    assert response.status_code == 200 and "upstream_stream_interrupted" in response.text
    wait_settled(stack, response)
    streamed = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in response.text.splitlines()
        if line.startswith('data: {"id"')
    )
    expected = tokens.chat_prompt_tokens(MESSAGES) + tokens.count_text(streamed)
    assert tokens.count_text(streamed) == 3
    assert stack.quota_used(f"key#{key['key_id']}", "tokens_per_minute") == expected


def test_client_disconnect_settles_what_the_upstream_produced(stack):
    key = stack.create_key(tenant="settle-disconnect")
    body = {
        "model": "mock-gpt",
        "messages": MESSAGES,
        "stream": True,
        "max_tokens": 400,
        "mock_reply_tokens": 400,
        "mock_token_delay": 0.02,
    }
    received = 0
    with httpx.stream(
        "POST",
        f"{stack.base_url}/v1/chat/completions",
        json=body,
        timeout=30,
        headers={"authorization": f"Bearer {key['api_key']}"},
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                received += 1
                if received == 5:
                    break
    item = wait_settled(stack, response)
    used = stack.quota_used(f"key#{key['key_id']}", "tokens_per_minute")
    prompt = tokens.chat_prompt_tokens(MESSAGES)
    assert prompt + received <= used < prompt + 400, "the unused reservation must be refunded"
    assert item["usage"]["completion_tokens"] == used - prompt


@pytest.mark.parametrize("stream", [False, True])
def test_usage_is_counted_with_tiktoken_when_the_upstream_omits_it(stack, stream):
    key = stack.create_key(tenant=f"settle-omit-{stream}")
    response = post(
        stack, key["api_key"], {"model": "mock-omit", "messages": MESSAGES, "stream": stream, "max_tokens": 9}
    )
    assert response.status_code == 200
    if not stream:
        assert "usage" not in response.json()
    wait_settled(stack, response)
    assert stack.quota_used(f"key#{key['key_id']}", "tokens_per_minute") == tokens.chat_prompt_tokens(MESSAGES) + 9


def test_tiny_limit_gets_429_with_openai_headers_and_oversize_gets_400(stack):
    key = stack.create_key(tenant="tiny", limits={"tokens_per_minute": 150, "requests_per_minute": 10})
    away_from_minute_boundary()
    body = {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 100}
    first = post(stack, key["api_key"], body)
    assert first.status_code == 200
    limited = post(stack, key["api_key"], body)
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "tokens"
    # Until the minute window resets, plus the jitter that spreads refused clients' returns.
    assert 1 <= int(limited.headers["retry-after"]) <= 60 + RETRY_JITTER_SECONDS
    for name in (
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ):
        assert name in limited.headers, name
    assert limited.headers["x-ratelimit-limit-tokens"] == "150"
    never = post(stack, key["api_key"], {**body, "max_tokens": 500})
    assert never.status_code == 400
    assert never.json()["error"]["code"] == "request_too_large_for_limit"


def test_a_finished_stream_is_settled_before_its_response_completes(stack):
    """Under the Lambda Web Adapter the invocation ends with the response: settlement must not be
    left for after it. So by the time the client has the whole response, the ledger is settled."""
    from tests.quota_table import QuotaTable

    key = stack.create_key(tenant="settle-in-time")
    table = QuotaTable(boto3.client("dynamodb"))
    for _ in range(5):
        response = post(
            stack, key["api_key"], {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "max_tokens": 5}
        )
        assert response.text.rstrip().endswith("data: [DONE]")
        item = table.get_reservation(response.headers["x-quotagate-request-id"])
        assert item is not None and item["status"] == "settled"


def test_the_400_for_n_times_max_tokens_names_what_the_client_sent(stack):
    key = stack.create_key(tenant="n-times", limits={"max_tokens_per_request": 256})
    body = {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 100, "n": 4}
    refused = post(stack, key["api_key"], body)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "request_too_large_for_limit" and error["param"] == "max_tokens"
    assert "n=4" in error["message"] and "max_tokens 100" in error["message"]
    assert "400 output tokens" in error["message"] and "256" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_key_without_any_limit_still_leaves_one_settled_usage_record(stack, stream):
    # No key window, no tenant window: no store call before the upstream; the record is put while
    # the mock answers and settled after, so the usage pipeline (which reads settled items) sees it.
    stack.invoke_keys({"action": "create_tenant", "tenant": f"open-{stream}", "limits": {}})
    key = stack.create_key(tenant=f"open-{stream}", consumer="free", plan="no-limits")
    body = {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 5, "stream": stream}
    response = post(stack, key["api_key"], body)
    assert response.status_code == 200
    assert not any(name.startswith("x-ratelimit-") for name in response.headers)
    item = wait_settled(stack, response)
    record = item["usage_record"]
    assert (record["tenant"], record["key_id"], record["outcome"]) == (f"open-{stream}", key["key_id"], "ok")
    assert record["completion_tokens"] > 0 and record["prompt_tokens"] > 0
