"""A key's request windows count every request it makes, refused or not (issue 18, item 6).

A request the proxy refuses for the caller's own fault once it knows the caller (a body it cannot
parse, a body too large, an unknown model) still costs gateway CPU, and so does count_tokens: each
counts one request in the key's and the tenant's request-count windows, and nothing else (no
tokens, no dollars, no reservation item). A caller at its requests_per_minute then gets the usual
429 on its next request, however many of its requests were refused.
"""

from __future__ import annotations

import time

import boto3
import httpx
import pytest

from quotagate import tables
from quotagate.protocols.anthropic_messages import COUNT_TOKENS_MAX_BODY_BYTES
from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack

pytestmark = pytest.mark.timeout(180)

RATE = 5
CONFIG = {
    "default_plan": "counted",
    "plans": {
        "counted": {
            "limits": {"requests_per_minute": RATE, "tokens_per_minute": 100_000, "usd_per_day": 5},
            "models": "*",
        }
    },
    "default_tenant_limits": {"requests_per_minute": 1000, "usd_per_month": 10},
    "models": {
        **TEST_CONFIG["models"],
        "mock-400": {"provider": "mock", "upstream_model": "mock-gpt@status=400", "price": {"input_per_million": 1.0}},
    },
}
GOOD = b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}'
COUNT_BODY = b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}'
REFUSED = [
    ("chat/completions", b'{"model": "mock-gpt", "messages": [], "temperature": NaN}', 400),
    ("chat/completions", b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}', 404),
    ("chat/completions", b'{"model": "mock-gpt", "messages": "' + b"x" * (4 * 1024 * 1024) + b'"}', 413),
    ("messages/count_tokens", b'{"model": "mock-gpt", "x": "' + b"x" * COUNT_TOKENS_MAX_BODY_BYTES + b'"}', 413),
    ("embeddings", b'{"model": "mock-gpt", "input": "\\ud800"}', 400),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("refused-count"), CONFIG) as running:
        yield running


def post(stack, api_key: str, path: str, raw: bytes) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/v1/{path}",
        content=raw,
        timeout=60,
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
    )


def used(stack, key: dict, limit: str, scope: str = "key") -> int:
    return stack.quota_used(f"{scope}#{key['key_id' if scope == 'key' else 'tenant']}", limit)


def eventually(read, expected: int) -> int:
    """The count lands after the answer (a background task): wait for it, briefly."""
    deadline = time.monotonic() + 10
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def reservation_items() -> list:
    items = boto3.client("dynamodb").scan(TableName=tables.QUOTA.name()).get("Items", [])
    return [item for item in items if item["pk"]["S"].startswith("req#")]


def away_from_a_minute_boundary() -> None:
    if time.time() % 60 > 40:  # the whole test must fit in one minute window
        time.sleep(61 - time.time() % 60)


def test_refused_requests_count_in_the_request_windows_only(stack):
    away_from_a_minute_boundary()
    key = stack.create_key(tenant="refusals", plan="counted")
    before = reservation_items()
    for path, raw, status in REFUSED:
        response = post(stack, key["api_key"], path, raw)
        assert response.status_code == status, (path, response.text[:300])
    assert eventually(lambda: used(stack, key, "requests_per_minute"), len(REFUSED)) == len(REFUSED)
    assert eventually(lambda: used(stack, key, "requests_per_minute", "tenant"), len(REFUSED)) == len(REFUSED)
    for limit in ("tokens_per_minute", "usd_per_day"):
        assert used(stack, key, limit) == 0, limit
    assert used(stack, key, "usd_per_month", "tenant") == 0
    assert reservation_items() == before  # no reservation item: nothing reached a model


def test_a_key_whose_refused_requests_used_its_rate_gets_a_429(stack):
    away_from_a_minute_boundary()
    key = stack.create_key(tenant="refusals-429", plan="counted")
    for path, raw, status in REFUSED:
        assert post(stack, key["api_key"], path, raw).status_code == status, path
    eventually(lambda: used(stack, key, "requests_per_minute"), RATE)
    response = post(stack, key["api_key"], "chat/completions", GOOD)
    assert response.status_code == 429, response.text[:300]
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


def test_count_tokens_counts_as_a_request(stack):
    away_from_a_minute_boundary()
    key = stack.create_key(tenant="counting", plan="counted")
    for _ in range(RATE):
        response = post(stack, key["api_key"], "messages/count_tokens", COUNT_BODY)
        assert response.status_code == 200, response.text[:300]
    assert eventually(lambda: used(stack, key, "requests_per_minute"), RATE) == RATE
    assert used(stack, key, "tokens_per_minute") == 0
    assert post(stack, key["api_key"], "chat/completions", GOOD).status_code == 429


def test_a_good_request_still_counts_once(stack):
    away_from_a_minute_boundary()
    key = stack.create_key(tenant="served", plan="counted")
    response = post(stack, key["api_key"], "chat/completions", GOOD)
    assert response.status_code == 200, response.text[:300]
    time.sleep(0.5)  # a wrongly scheduled count would land by now
    assert used(stack, key, "requests_per_minute") == 1


def test_a_request_refused_after_its_reservation_counts_once(stack):
    """A 400 the target answered (after the reservation counted the request) is not counted again."""
    away_from_a_minute_boundary()
    key = stack.create_key(tenant="upstream-400", plan="counted")
    response = post(stack, key["api_key"], "chat/completions", GOOD.replace(b"mock-gpt", b"mock-400"))
    assert response.status_code == 400, response.text[:300]
    time.sleep(0.5)  # a second count would land by now
    assert used(stack, key, "requests_per_minute") == 1
