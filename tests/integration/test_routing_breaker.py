"""The circuit breaker across containers: two proxy apps (two Gateway instances, each with its own
cache) share circuit state through DynamoDB (the moto server). One container's discovery makes the
other skip the target; after the cool-down exactly one probe goes out; a good probe closes the
circuit, a bad one re-opens it; with every circuit open the proxy fails fast without reserving."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from starlette.testclient import TestClient

from quotagate import tables
from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack
from tests.integration.test_routing import clear_circuits

pytestmark = pytest.mark.timeout(120)

MESSAGES = [{"role": "user", "content": "Is the bridge open?"}]
# Long enough that a loaded 2-core CI box finishes each phase inside one cool-down.
COOLDOWN = 4.0
BROKEN = "mock-gpt@status=503"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, flaky):
    good = {"provider": "mock", "upstream_model": "mock-gpt"}
    overrides = {
        "providers": {
            **TEST_CONFIG["providers"],
            "recovering-upstream": {"type": "openai", "base_url": f"{flaky[1]}/v1", "read_timeout": 5},
        },
        "models": {
            **TEST_CONFIG["models"],
            "pair": {"targets": [{"provider": "mock", "upstream_model": BROKEN}, good]},
            "solo-broken": {"targets": [{"provider": "mock", "upstream_model": "mock-gpt@status=500&tokens=3"}]},
            "recovering": {"targets": [{"provider": "recovering-upstream", "upstream_model": "mock-gpt"}, good]},
        },
        "circuit_breaker": {
            "failure_threshold": 3,
            "cooldown_seconds": COOLDOWN,
            "cache_seconds": 0.2,
            "probe_lease_seconds": 10,
        },
    }
    with gateway_stack(tmp_path_factory.mktemp("breaker"), overrides, token_delay=0.001) as running:
        clear_circuits()
        yield running
        clear_circuits()


@pytest.fixture(scope="module")
def gateways(stack):
    """Two proxy containers: separate apps, separate Gateway and breaker caches, one DynamoDB."""
    from functions.proxy.app import create_app

    with TestClient(create_app()) as first, TestClient(create_app()) as second:
        yield first, second


@pytest.fixture(scope="module")
def key(stack):
    return stack.create_key(tenant="breaker", plan="pro", limits={"requests_per_minute": 1000})


@pytest.fixture(scope="module")
def outage_keys(stack):
    """Keys of three other tenants: a target that fails for all of them has an outage (the shared
    circuit opens only when several tenants see failures, tests/integration/test_breaker_tenants.py)."""
    return [stack.create_key(tenant=f"outage-{i}", plan="pro", limits={"requests_per_minute": 1000}) for i in range(3)]


def ask(client, key, model, stream=False):
    return client.post(
        "/v1/chat/completions",
        headers={"authorization": f"Bearer {key['api_key']}"},
        json={"model": model, "messages": MESSAGES, "max_tokens": 2, "stream": stream},
    )


def broken_calls(stack) -> int:
    return sum(1 for r in stack.mock.stats.recent_requests if r["model"] == BROKEN)


def circuit_item(target: str) -> dict:
    return (
        boto3.client("dynamodb")
        .get_item(TableName=tables.CIRCUIT.name(), Key={"target": {"S": target}})
        .get("Item", {})
    )


def test_one_containers_discovery_protects_the_other(stack, gateways, key, outage_keys):
    first, second = gateways
    stack.mock.stats.reset()
    for outage_key in outage_keys:
        response = ask(first, outage_key, "pair")
        assert response.status_code == 200 and response.headers["x-quotagate-target"] == "mock/mock-gpt"
    assert broken_calls(stack) == 3
    assert circuit_item(f"mock/{BROKEN}")["state"]["S"] == "open"

    for client in (second, first, second):  # the second container has never seen the target fail
        for stream in (False, True):
            response = ask(client, key, "pair", stream)
            assert response.status_code == 200 and response.headers["x-quotagate-target"] == "mock/mock-gpt"
    assert broken_calls(stack) == 3, "an open circuit is skipped by every container"

    # Cool-down over: exactly one probe among concurrent requests from both containers.
    time.sleep(COOLDOWN + 0.1)
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda i: ask(gateways[i % 2], key, "pair"), range(8)))
    assert all(r.status_code == 200 for r in responses)
    assert broken_calls(stack) == 4
    # The probe failed: open again, for a new cool-down, everywhere.
    time.sleep(0.3)
    for client in (first, second):
        assert ask(client, key, "pair").status_code == 200
    assert broken_calls(stack) == 4
    assert circuit_item(f"mock/{BROKEN}")["state"]["S"] == "open"


def test_a_good_probe_closes_the_circuit_for_everyone(stack, gateways, key, outage_keys, flaky):
    first, second = gateways
    upstream, _ = flaky
    upstream.arm(3, status=500, retry_after=None)
    for outage_key in outage_keys:
        response = ask(first, outage_key, "recovering")
        assert response.status_code == 200 and response.headers["x-quotagate-target"] == "mock/mock-gpt"
    assert upstream.hits == 3
    assert ask(second, key, "recovering").headers["x-quotagate-target"] == "mock/mock-gpt"
    assert upstream.hits == 3

    time.sleep(COOLDOWN + 0.1)
    probe = ask(second, key, "recovering", stream=True)
    assert probe.status_code == 200 and probe.headers["x-quotagate-target"] == "recovering-upstream/mock-gpt"
    assert upstream.hits == 4
    item = circuit_item("recovering-upstream/mock-gpt")
    assert item["state"]["S"] == "closed" and item["failures"]["N"] == "0"
    time.sleep(0.3)  # the first container's cached copy expires
    assert ask(first, key, "recovering").headers["x-quotagate-target"] == "recovering-upstream/mock-gpt"


def test_every_circuit_open_fails_fast_without_reserving(stack, gateways, key):
    first, _ = gateways
    for _ in range(3):
        assert ask(first, key, "solo-broken").status_code == 502
    used = stack.quota_used(f"key#{key['key_id']}", "requests_per_minute")
    before = stack.mock.stats.snapshot()["chat_requests"]
    started = time.monotonic()
    response = ask(first, key, "solo-broken")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable" and set(error) == {"message", "type", "param", "code"}
    assert 1 <= int(response.headers["retry-after"]) <= COOLDOWN + 1
    assert time.monotonic() - started < 1
    assert stack.mock.stats.snapshot()["chat_requests"] == before
    assert stack.quota_used(f"key#{key['key_id']}", "requests_per_minute") == used, "nothing reserved"
