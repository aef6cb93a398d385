"""One tenant cannot take a model down for the others (issue 18, item 1).

A provider's 5xx caused by one client's content (here: a recursive JSON schema the mock cannot
expand, so it answers 500 like a provider that crashes on it) looks exactly like an outage. The
breaker decides across callers: a hostile tenant's failures open a circuit for that tenant alone,
healthy tenants never see a 503, and a real outage that every tenant sees still opens the shared
circuit for everyone, fast and without calling the target."""

from __future__ import annotations

import json
import time

import boto3
import pytest
from hypothesis import given
from starlette.testclient import TestClient

from quotagate import tables
from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack, mock_providers
from tests.integration.test_fuzz_hostile_json import CHAT_BASE, CHAT_FIELDS, fuzz
from tests.integration.test_fuzz_hostile_json import bodies as fuzz_bodies
from tests.integration.test_routing import clear_circuits

pytestmark = pytest.mark.timeout(120)

COOLDOWN = 4.0
MESSAGES = [{"role": "user", "content": "Is the bridge open?"}]
# The mock recurses into this schema until Python gives up: an upstream 500 caused by the content.
RECURSIVE_SCHEMA = {
    "type": "object",
    "properties": {"a": {"$ref": "#/$defs/A"}},
    "$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}]}},
}
HOSTILE_CHAT = {
    "model": "mock-gpt",
    "messages": MESSAGES,
    "max_tokens": 8,
    "response_format": {"type": "json_schema", "json_schema": {"name": "loop", "schema": RECURSIVE_SCHEMA}},
}
# A forced tool with an open input schema and a prompt that writes out the recursive schema: the
# mock fills the tool's input as the prompt describes, and recurses until it answers 500.
HOSTILE_MESSAGES = {
    "model": "claude",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": f"Fill in this object: {json.dumps(RECURSIVE_SCHEMA)}"}],
    "tools": [{"name": "loop", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "tool", "name": "loop"},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, flaky):
    overrides = {
        "providers": {
            **TEST_CONFIG["providers"],
            **mock_providers(),
            "recovering-upstream": {"type": "openai", "base_url": f"{flaky[1]}/v1", "read_timeout": 5},
        },
        "models": {
            **TEST_CONFIG["models"],
            "recovering": {"provider": "recovering-upstream", "upstream_model": "mock-gpt"},
            "claude": {"provider": "anthropic", "upstream_model": "mock-claude"},
            "outage": {"provider": "mock", "upstream_model": "mock-gpt@status=500&tokens=3"},
        },
        "circuit_breaker": {
            "failure_threshold": 3,
            "cooldown_seconds": COOLDOWN,
            "cache_seconds": 0.2,
            "probe_lease_seconds": 10,
        },
    }
    with gateway_stack(tmp_path_factory.mktemp("tenants"), overrides, token_delay=0.001) as running:
        clear_circuits()
        yield running
        clear_circuits()


@pytest.fixture(scope="module")
def proxy(stack):
    from functions.proxy.app import create_app

    with TestClient(create_app()) as client:
        yield client


def key_of(stack, tenant):
    return stack.create_key(tenant=tenant, plan="pro", limits={"requests_per_minute": 1000})["api_key"]


def chat(proxy, key, body):
    return proxy.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body)


def messages(proxy, key, body):
    return proxy.post(
        "/v1/messages", headers={"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}, json=body
    )


def healthy_chat(model="mock-gpt"):
    return {"model": model, "messages": MESSAGES, "max_tokens": 2}


def healthy_messages():
    return {"model": "claude", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello there"}]}


def shared_circuit(target):
    item = boto3.client("dynamodb").get_item(TableName=tables.CIRCUIT.name(), Key={"target": {"S": target}})
    return item.get("Item", {}).get("state", {}).get("S", "closed")


def test_a_hostile_tenant_opens_a_circuit_for_itself_only(stack, proxy):
    hostile, healthy, other = (key_of(stack, t) for t in ("hostile", "healthy", "other-healthy"))
    statuses = []
    for _ in range(8):
        statuses.append(chat(proxy, hostile, HOSTILE_CHAT).status_code)
        for key in (healthy, other):
            response = chat(proxy, key, healthy_chat())
            assert response.status_code == 200, response.text
    assert statuses[:3] == [502, 502, 502], "the mock answers 500 to this schema"
    assert set(statuses[3:]) == {503}, "its own circuit is open: the target is no longer called for it"
    assert shared_circuit("mock/mock-gpt") == "closed"
    time.sleep(0.3)  # every cached copy of the circuits is stale
    for key in (healthy, other):
        assert chat(proxy, key, healthy_chat()).status_code == 200


def test_a_hostile_messages_caller_cannot_open_claude_for_others(stack, proxy):
    hostile, healthy = key_of(stack, "hostile-messages"), key_of(stack, "healthy-messages")
    statuses = []
    for _ in range(6):
        statuses.append(messages(proxy, hostile, HOSTILE_MESSAGES).status_code)
        response = messages(proxy, healthy, healthy_messages())
        assert response.status_code == 200, response.text
    assert statuses[:3] == [502, 502, 502], "the mock answers 500 to this prompt"
    assert set(statuses[3:]) == {503}
    assert shared_circuit("anthropic/mock-claude") == "closed"


def test_a_failing_caller_cannot_be_the_probe(stack, proxy, flaky):
    """A real outage opens the shared circuit; after the cool-down the target has recovered. The
    hostile tenant, itself failing on this target, may not be the half-open probe (its failure would
    prove nothing and keep the circuit open for everyone): a healthy tenant's request probes it."""
    upstream, _ = flaky
    hostile, healthy = key_of(stack, "hostile-probe"), key_of(stack, "healthy-probe")
    upstream.arm(0)
    assert chat(proxy, hostile, {**HOSTILE_CHAT, "model": "recovering"}).status_code == 502
    assert chat(proxy, healthy, healthy_chat("recovering")).status_code == 200
    upstream.arm(3, status=500, retry_after=None)  # the outage: every tenant sees it
    for key in [key_of(stack, f"outage-{i}") for i in range(3)]:
        assert chat(proxy, key, healthy_chat("recovering")).status_code == 502
    assert shared_circuit("recovering-upstream/mock-gpt") == "open"

    time.sleep(COOLDOWN + 0.3)  # half-open, and the upstream answers again
    upstream.arm(0)
    for _ in range(3):
        response = chat(proxy, hostile, {**HOSTILE_CHAT, "model": "recovering"})
        assert response.status_code == 503, response.text
    assert upstream.hits == 0, "the failing tenant did not probe"
    assert chat(proxy, healthy, healthy_chat("recovering")).status_code == 200
    assert upstream.hits == 1 and shared_circuit("recovering-upstream/mock-gpt") == "closed"


def test_a_real_outage_every_tenant_sees_opens_the_shared_circuit(stack, proxy):
    keys = [key_of(stack, f"tenant-{i}") for i in range(4)]
    for key in keys[:3]:
        response = chat(proxy, key, healthy_chat("outage"))
        assert response.status_code == 502, response.text
    assert shared_circuit("mock/mock-gpt@status=500&tokens=3") == "open"
    before = stack.mock.stats.snapshot()["chat_requests"]
    started = time.monotonic()
    response = chat(proxy, keys[3], healthy_chat("outage"))  # a tenant that never failed
    assert response.status_code == 503 and response.json()["error"]["code"] == "upstream_unavailable"
    assert time.monotonic() - started < 1
    assert stack.mock.stats.snapshot()["chat_requests"] == before, "the target is not called"


# -- whatever the hostile tenant sends ---------------------------------------------------------------
FUZZ_EXAMPLES = 40


@pytest.fixture(scope="module")
def fuzz_keys(stack):
    return key_of(stack, "fuzz-hostile"), key_of(stack, "fuzz-healthy")


@fuzz(FUZZ_EXAMPLES)
@given(raw=fuzz_bodies(CHAT_BASE, CHAT_FIELDS))
def test_no_body_of_one_tenant_makes_another_see_a_503(stack, proxy, fuzz_keys, raw):
    """Each example: the hostile tenant sends a fuzzed body and the body the upstream fails on;
    the healthy tenant's next request is served."""
    hostile, healthy = fuzz_keys
    for body in (raw, json.dumps(HOSTILE_CHAT).encode()):
        response = proxy.post(
            "/v1/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {hostile}", "content-type": "application/json"},
        )
        assert response.status_code != 500, response.text
    served = chat(proxy, healthy, healthy_chat())
    assert served.status_code == 200, (raw[:300], served.text)
