"""Routing through the whole local gateway (API Gateway emulator, real authorizer and proxy, moto,
mock models): failover before the first byte (500, timeout, refused connection; streamed and not),
Retry-After within the time budget, deadlines, tiers, A/B and sticky picks, the target header,
/v1/models per plan, and exact quota settlement after failover."""

from __future__ import annotations

import json
import math
import socket
import time

import httpx
import pytest

from quotagate import tokens
from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack
from tests.integration.refusal_counts import wait_requests_counted

pytestmark = pytest.mark.timeout(120)

MESSAGES = [{"role": "user", "content": "Which way to the lighthouse?"}]
CHEAP = {"input_per_million": 1.0, "output_per_million": 2.0}
DEAR = {"input_per_million": 10.0, "output_per_million": 20.0}


def clear_circuits() -> None:
    """moto keeps its state per process, across moto servers: start and end with no circuit state,
    so one module's open circuits never leak into another's."""
    import boto3

    from quotagate import tables

    client = boto3.client("dynamodb")
    for item in client.scan(TableName=tables.CIRCUIT.name()).get("Items", []):
        client.delete_item(TableName=tables.CIRCUIT.name(), Key={"target": item["target"]})


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more: connections are refused
    return port


def routing_config(flaky_url: str) -> dict:
    mock = {"provider": "mock", "upstream_model": "mock-gpt", "price": CHEAP}
    return {
        "providers": {
            **TEST_CONFIG["providers"],
            "closed": {"type": "openai", "base_url": f"http://127.0.0.1:{closed_port()}/v1", "connect_timeout": 1},
            "flaky": {"type": "openai", "base_url": f"{flaky_url}/v1", "connect_timeout": 2, "read_timeout": 5},
        },
        "models": {
            **TEST_CONFIG["models"],
            "fo-500": {"targets": [{"provider": "mock", "upstream_model": "mock-gpt@status=500", "price": DEAR}, mock]},
            "fo-slow": {
                "targets": [
                    {
                        "provider": "mock",
                        "upstream_model": "mock-gpt@delay_first_byte=3",
                        "price": DEAR,
                        "timeouts": {"first_byte": 0.5},
                    },
                    mock,
                ]
            },
            "fo-refused": {"targets": [{"provider": "closed", "upstream_model": "mock-gpt", "price": DEAR}, mock]},
            "fo-429": {"targets": [{"provider": "mock", "upstream_model": "mock-gpt@status=429&retry_after=5"}, mock]},
            "fo-bad-request": {"targets": [{"provider": "mock", "upstream_model": "mock-gpt@status=400"}, mock]},
            "retry-429": {
                "targets": [{"provider": "flaky", "upstream_model": "mock-gpt", "price": CHEAP}],
                "deadline": 10,
            },
            "retry-429-tight": {"targets": [{"provider": "flaky", "upstream_model": "mock-gpt"}], "deadline": 0.6},
            "deadline-slow": {
                "targets": [
                    {
                        "provider": "mock",
                        "upstream_model": "mock-gpt@delay_first_byte=5",
                        "timeouts": {"first_byte": 10},
                    },
                    mock,
                ],
                "deadline": 1,
            },
            "idle-slow": {
                "targets": [
                    {"provider": "mock", "upstream_model": "mock-gpt@token_delay=1.5", "timeouts": {"idle": 0.5}}
                ]
            },
            "ab": {
                "targets": [
                    {"provider": "mock", "upstream_model": "mock-gpt", "weight": 50},
                    {"provider": "mock", "upstream_model": "mock-gpt-mini", "weight": 50},
                ]
            },
            "ab-sticky": {
                "targets": [
                    {"provider": "mock", "upstream_model": "mock-gpt", "weight": 50},
                    {"provider": "mock", "upstream_model": "mock-gpt-mini", "weight": 50},
                ],
                "sticky": True,
            },
            "pro-only": {
                "targets": [{"provider": "mock", "upstream_model": "mock-gpt", "plans": ["pro"]}],
                "on_tier_mismatch": "refuse",
            },
            "pro-or-ab": {
                "targets": [{"provider": "mock", "upstream_model": "mock-gpt-mini", "plans": ["pro"]}],
                "on_tier_mismatch": "downgrade",
                "downgrade_to": "ab",
            },
        },
        "plans": {
            **TEST_CONFIG["plans"],
            "free": {
                **TEST_CONFIG["plans"]["free"],
                "models": [*TEST_CONFIG["plans"]["free"]["models"], "fo-500", "ab", "pro-only", "pro-or-ab"],
            },
        },
        "circuit_breaker": {"failure_threshold": 1000},  # breaker behaviour: test_routing_breaker.py
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory, flaky):
    with gateway_stack(
        tmp_path_factory.mktemp("routing"), routing_config(flaky[1]), keepalive_seconds=0.2, token_delay=0.002
    ) as running:
        clear_circuits()
        yield running
        clear_circuits()


@pytest.fixture
def key(stack, request):
    return stack.create_key(tenant=f"t-{request.node.name[:40]}", plan="pro")


def post(stack, api_key, body, timeout=30):
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json=body,
        timeout=timeout,
        headers={"authorization": f"Bearer {api_key}"},
    )


def sse_data(text: str) -> list:
    events = []
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[6:]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def upstream_models_since(stack, count_before: int) -> list[str]:
    return [r["model"] for r in stack.mock.stats.recent_requests[count_before:]]


def recent_count(stack) -> int:
    return len(stack.mock.stats.recent_requests)


def streamed_text(events) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in events if isinstance(c, dict) and c.get("choices")
    )


# -- failover -------------------------------------------------------------------------------------
@pytest.mark.parametrize("alias", ["fo-500", "fo-slow", "fo-refused", "fo-429"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_failover_before_the_first_byte_gives_a_complete_answer(stack, key, alias, stream):
    stack.mock.stats.reset()
    started = time.monotonic()
    response = post(stack, key["api_key"], {"model": alias, "messages": MESSAGES, "max_tokens": 8, "stream": stream})
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.headers["x-quotagate-target"] == "mock/mock-gpt"
    assert response.headers["x-quotagate-model"] == alias
    if stream:
        events = sse_data(response.text)
        assert events[-1] == "[DONE]"
        assert not any("error" in e for e in events if isinstance(e, dict))
        assert tokens.count_text(streamed_text(events)) == 8
        assert {e["model"] for e in events if isinstance(e, dict)} == {"mock-gpt"}
    else:
        body = response.json()
        assert body["model"] == "mock-gpt"  # the model that answered
        assert body["usage"]["completion_tokens"] == 8
    models = [r["model"] for r in stack.mock.stats.recent_requests]
    if alias == "fo-refused":
        assert models == ["mock-gpt"]  # the first target never got the request
    else:
        assert len(models) == 2 and models[1] == "mock-gpt" and models[0] != "mock-gpt"
    if alias == "fo-slow":
        assert elapsed < 2.5, "the first-byte timeout (0.5 s) must cut the 3 s wait"
    if alias == "fo-429":
        assert elapsed < 2, "with another target left, a Retry-After is not waited for"


def test_client_errors_do_not_fail_over(stack, key):
    stack.mock.stats.reset()
    response = post(stack, key["api_key"], {"model": "fo-bad-request", "messages": MESSAGES})
    assert response.status_code == 400
    assert [r["model"] for r in stack.mock.stats.recent_requests] == ["mock-gpt@status=400"]


def test_every_target_failing_is_the_last_error(stack, key):
    response = post(stack, key["api_key"], {"model": "mock-500", "messages": MESSAGES})
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"
    assert "x-quotagate-target" not in response.headers
    assert response.headers["x-quotagate-request-id"]


# -- Retry-After and deadlines ------------------------------------------------------------------------
def test_retry_after_is_honoured_within_the_budget(stack, key, flaky):
    upstream, _ = flaky
    for stream in (False, True):
        upstream.arm(1, status=429, retry_after="1")
        started = time.monotonic()
        response = post(
            stack, key["api_key"], {"model": "retry-429", "messages": MESSAGES, "max_tokens": 4, "stream": stream}
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert upstream.hits == 2
        assert 1.0 <= elapsed < 4, elapsed
        assert response.headers["x-quotagate-target"] == "flaky/mock-gpt"


def test_retry_after_past_the_deadline_is_not_waited_for(stack, key, flaky):
    upstream, _ = flaky
    upstream.arm(5, status=429, retry_after="1")
    started = time.monotonic()
    response = post(stack, key["api_key"], {"model": "retry-429-tight", "messages": MESSAGES})
    elapsed = time.monotonic() - started
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert upstream.hits == 1 and elapsed < 0.9, elapsed


def test_retries_are_bounded(stack, key, flaky):
    upstream, _ = flaky
    upstream.arm(100, status=503, retry_after="0")
    response = post(stack, key["api_key"], {"model": "retry-429", "messages": MESSAGES})
    assert response.status_code == 502
    assert upstream.hits == 3  # the first try and two Retry-After rounds


def test_total_deadline_ends_the_wait(stack, key):
    stack.mock.stats.reset()
    started = time.monotonic()
    response = post(stack, key["api_key"], {"model": "deadline-slow", "messages": MESSAGES})
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert 0.9 <= elapsed < 3, elapsed
    assert [r["model"] for r in stack.mock.stats.recent_requests] == ["mock-gpt@delay_first_byte=5"]


def test_idle_timeout_after_the_first_byte_ends_the_stream_with_an_error_event(stack, key):
    response = post(
        stack, key["api_key"], {"model": "idle-slow", "messages": MESSAGES, "stream": True, "max_tokens": 4}
    )
    assert response.status_code == 200
    events = sse_data(response.text)
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "upstream_timeout"


# -- quotas after failover ----------------------------------------------------------------------------
def micro_usd(price, prompt, completion):
    return math.ceil(round((prompt * price["input_per_million"] + completion * price["output_per_million"]), 6))


def wait_settled(stack, key_id, limit, expected, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        used = stack.quota_used(f"key#{key_id}", limit)
        if used == expected:
            return used
        time.sleep(0.05)
    return stack.quota_used(f"key#{key_id}", limit)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("alias", ["fo-500", "fo-slow", "fo-refused"])
def test_settlement_charges_the_serving_target_only(stack, alias, stream):
    key = stack.create_key(
        tenant=f"settle-{alias}-{stream}", plan="pro", limits={"tokens_per_minute": 100000, "usd_per_day": 5}
    )
    body = {"model": alias, "messages": MESSAGES, "max_tokens": 12, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    response = post(stack, key["api_key"], body)
    assert response.status_code == 200
    usage = sse_data(response.text)[-2]["usage"] if stream else response.json()["usage"]
    total = usage["prompt_tokens"] + usage["completion_tokens"]
    assert wait_settled(stack, key["key_id"], "tokens_per_minute", total) == total
    expected_usd = micro_usd(CHEAP, usage["prompt_tokens"], usage["completion_tokens"])
    assert wait_settled(stack, key["key_id"], "usd_per_day", expected_usd) == expected_usd
    assert stack.quota_used(f"key#{key['key_id']}", "requests_per_minute") in (0, 1)


def test_the_reservation_uses_the_dearest_eligible_target(stack):
    prompt = tokens.chat_prompt_tokens(MESSAGES)
    cheap_reserve = (prompt * 1.0 + 100 * 2.0) / 1e6
    dear_reserve = (prompt * 10.0 + 100 * 20.0) / 1e6
    limit = (cheap_reserve + dear_reserve) / 2
    key = stack.create_key(tenant="reserve-dearest", plan="pro", limits={"usd_per_day": limit})
    stack.mock.stats.reset()
    refused = post(stack, key["api_key"], {"model": "fo-500", "messages": MESSAGES, "max_tokens": 100})
    # The dearest target's worst case can never fit the budget, even though the cheap one would.
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "request_too_large_for_limit"
    assert stack.mock.stats.recent_requests == []
    served = post(stack, key["api_key"], {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 100})
    assert served.status_code == 200


# -- splits, stickiness, tiers, listing ---------------------------------------------------------------
def test_ab_split_is_visible_in_the_target_header(stack, key):
    seen = [
        post(stack, key["api_key"], {"model": "ab", "messages": MESSAGES, "max_tokens": 1}).headers[
            "x-quotagate-target"
        ]
        for _ in range(24)
    ]
    assert set(seen) == {"mock/mock-gpt", "mock/mock-gpt-mini"}


def test_sticky_consumer_keeps_its_target(stack):
    for consumer in ("alice", "bob", "carol"):
        key = stack.create_key(tenant="sticky", consumer=consumer, plan="pro")
        seen = {
            post(stack, key["api_key"], {"model": "ab-sticky", "messages": MESSAGES, "max_tokens": 1}).headers[
                "x-quotagate-target"
            ]
            for _ in range(6)
        }
        assert len(seen) == 1, (consumer, seen)


def test_streaming_response_carries_the_target_header(stack):
    key = stack.create_key(tenant="stream-headers", plan="free")  # a plan with rate limits
    with httpx.stream(
        "POST",
        f"{stack.base_url}/v1/chat/completions",
        timeout=30,
        json={"model": "ab", "messages": MESSAGES, "stream": True, "max_tokens": 2},
        headers={"authorization": f"Bearer {key['api_key']}"},
    ) as response:
        assert response.headers["x-quotagate-target"] in ("mock/mock-gpt", "mock/mock-gpt-mini")
        assert response.headers["x-quotagate-request-id"]
        assert response.headers["x-ratelimit-limit-requests"] == "1000"
        assert response.headers["x-ratelimit-remaining-tokens"]
        response.read()


def test_tier_refuse_and_downgrade(stack):
    free = stack.create_key(tenant="tiers", consumer="f", plan="free")
    pro = stack.create_key(tenant="tiers", consumer="p", plan="pro")
    refused = post(stack, free["api_key"], {"model": "pro-only", "messages": MESSAGES})
    assert refused.status_code == 404  # as for a name that does not exist: no oracle
    error = refused.json()["error"]
    assert error["code"] == "model_not_found" and "plan" not in error["message"]
    # Counted as one request (issue 18, item 6), and nothing more: no tokens.
    assert wait_requests_counted(stack, f"key#{free['key_id']}", 1) == 1
    assert stack.quota_used(f"key#{free['key_id']}", "tokens_per_minute") == 0
    assert post(stack, pro["api_key"], {"model": "pro-only", "messages": MESSAGES, "max_tokens": 1}).status_code == 200

    downgraded = post(stack, free["api_key"], {"model": "pro-or-ab", "messages": MESSAGES, "max_tokens": 1})
    assert downgraded.status_code == 200
    assert downgraded.headers["x-quotagate-model"] == "ab"
    full = post(stack, pro["api_key"], {"model": "pro-or-ab", "messages": MESSAGES, "max_tokens": 1})
    assert full.headers["x-quotagate-model"] == "pro-or-ab"
    assert full.headers["x-quotagate-target"] == "mock/mock-gpt-mini"


def test_models_endpoint_lists_what_each_plan_may_call(stack):
    free = stack.create_key(tenant="listing", consumer="f", plan="free")
    pro = stack.create_key(tenant="listing", consumer="p", plan="pro")
    limited = stack.create_key(tenant="listing", consumer="l", plan="pro", allowed_models=["ab", "pro-only"])

    def listed(api_key):
        response = httpx.get(f"{stack.base_url}/v1/models", headers={"authorization": f"Bearer {api_key}"})
        assert response.status_code == 200
        assert response.json()["object"] == "list"
        return [m["id"] for m in response.json()["data"]]

    # pro-or-ab is listed for free keys: they reach it by downgrade (served by "ab"); pro-only refuses them.
    assert listed(free["api_key"]) == ["mock-gpt", "mock-omit", "mock-drop", "mock-500", "fo-500", "ab", "pro-or-ab"]
    pro_models = listed(pro["api_key"])
    assert {"pro-only", "pro-or-ab", "fo-slow", "mock-secret"} <= set(pro_models)
    # The request path serves pro-or-ab to this key through its downgrade to "ab", so it is listed.
    assert listed(limited["api_key"]) == ["ab", "pro-only", "pro-or-ab"]
