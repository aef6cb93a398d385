"""Hostile request bodies through the whole local gateway (API Gateway emulator, real authorizer,
real proxy, moto, the mock model): JSON that Python's ``json`` accepts but the gateway cannot
forward — NaN, Infinity, huge numbers, lone surrogates, deep nesting — is a 400 before anything is
reserved, never reaches a model, never counts against a target's circuit breaker, and never
gives a 500. The keys API refuses the same input without writing anything."""

from __future__ import annotations

import boto3
import httpx
import pytest

from quotagate import tables
from tests.integration.gateway_stack import gateway_stack
from tests.integration.refusal_counts import wait_requests_counted
from tests.integration.test_routing import clear_circuits

pytestmark = pytest.mark.timeout(120)

TARGET = "mock/mock-gpt"
MESSAGES = b'[{"role": "user", "content": "hi"}]'


def chat_body(extra: bytes = b"", messages: bytes = MESSAGES, model: bytes = b'"mock-gpt"') -> bytes:
    return b'{"model": ' + model + b', "messages": ' + messages + extra + b"}"


HOSTILE_CHAT_BODIES = {
    "temperature NaN": chat_body(b', "temperature": NaN'),
    "temperature Infinity": chat_body(b', "temperature": Infinity'),
    "top_p -Infinity": chat_body(b', "top_p": -Infinity'),
    "temperature 1e400": chat_body(b', "temperature": 1e400'),
    "max_tokens 10^400": chat_body(b', "max_tokens": 1' + b"0" * 400),
    "seed 2^70": chat_body(b', "seed": ' + str(2**70).encode()),
    "lone surrogate in content": chat_body(messages=b'[{"role": "user", "content": "hi \\ud800"}]'),
    "lone surrogate in an unknown field": chat_body(b', "user": "\\udfff"'),
    "lone surrogate in a key": chat_body(b', "metadata": {"\\ud83d": "x"}'),
    "lone surrogate in model": chat_body(model=b'"mock-\\ud800"'),
    "nested 1100 deep": chat_body(b', "metadata": ' + b"[" * 1100 + b"]" * 1100),
    "nested 65 deep": chat_body(b', "metadata": ' + b'{"a":' * 65 + b"1" + b"}" * 65),
    "number with 200 digits after the point": chat_body(b', "temperature": 0.' + b"1" * 200),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    overrides = {"circuit_breaker": {"failure_threshold": 3, "cooldown_seconds": 30, "cache_seconds": 0}}
    with gateway_stack(tmp_path_factory.mktemp("hostile"), overrides, token_delay=0.001) as running:
        clear_circuits()
        yield running
        clear_circuits()


def post(stack, api_key: str, path: str, raw: bytes) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/v1/{path}",
        content=raw,
        timeout=30,
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
    )


def circuit_item(target: str = TARGET) -> dict:
    return (
        boto3.client("dynamodb")
        .get_item(TableName=tables.CIRCUIT.name(), Key={"target": {"S": target}})
        .get("Item", {})
    )


def upstream_calls(stack) -> int:
    snapshot = stack.mock.stats.snapshot()
    return sum(count for name, count in snapshot.items() if name.endswith("_requests"))


def assert_openai_400(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


def assert_nothing_charged(stack, key: dict) -> None:
    """Counted as one request of the key (issue 18, item 6: its tenant has no request window), and
    nothing more: no tokens."""
    assert wait_requests_counted(stack, f"key#{key['key_id']}", 1) == 1
    assert stack.quota_used(f"tenant#{key['tenant']}", "requests_per_minute") == 0
    for scope_pk in (f"key#{key['key_id']}", f"tenant#{key['tenant']}"):
        assert stack.quota_used(scope_pk, "tokens_per_minute") == 0, scope_pk


@pytest.mark.parametrize("raw", HOSTILE_CHAT_BODIES.values(), ids=HOSTILE_CHAT_BODIES.keys())
@pytest.mark.parametrize("stream", [False, True])
def test_hostile_chat_body_is_a_400_that_costs_nothing(stack, raw, stream):
    key = stack.create_key(tenant=f"hostile-{abs(hash((raw, stream))) % 10**8}", plan="free")
    if stream:
        raw = raw[:-1] + b', "stream": true}'
    calls = upstream_calls(stack)
    response = post(stack, key["api_key"], "chat/completions", raw)
    assert_openai_400(response)
    assert upstream_calls(stack) == calls
    assert_nothing_charged(stack, key)
    assert circuit_item() == {}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "mock-gpt", "input": "hello", "user": NaN}',
        b'{"model": "mock-gpt", "input": [1, 2, 1' + b"0" * 400 + b"]}",
        b'{"model": "mock-gpt", "input": "\\ud800"}',
        b'{"model": "mock-gpt", "input": "hello", "dimensions": 1e400}',
    ],
    ids=["NaN field", "huge token id", "lone surrogate input", "dimensions 1e400"],
)
def test_hostile_embeddings_body_is_a_400_before_the_reservation(stack, raw):
    key = stack.create_key(tenant=f"hostile-emb-{abs(hash(raw)) % 10**8}", plan="free")
    calls = upstream_calls(stack)
    response = post(stack, key["api_key"], "embeddings", raw)
    assert_openai_400(response)
    assert upstream_calls(stack) == calls
    assert_nothing_charged(stack, key)


def test_nan_requests_cannot_open_the_breaker_for_another_tenant(stack):
    attacker = stack.create_key(tenant="attacker", plan="free")
    victim = stack.create_key(tenant="victim", plan="free")
    before = circuit_item()
    calls = upstream_calls(stack)
    for _ in range(3):  # the dev config's failure threshold
        assert_openai_400(post(stack, attacker["api_key"], "chat/completions", chat_body(b', "temperature": NaN')))
    assert upstream_calls(stack) == calls
    assert circuit_item() == before
    served = post(stack, victim["api_key"], "chat/completions", chat_body(b', "max_tokens": 3'))
    assert served.status_code == 200, served.text
    assert served.headers["x-quotagate-target"] == TARGET


def nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def scan_all() -> dict[str, list]:
    client = boto3.client("dynamodb")
    return {spec.name(): client.scan(TableName=spec.name()).get("Items", []) for spec in tables.ALL_TABLES}


@pytest.mark.parametrize(
    "fields",
    [
        {"limits": {"tokens_per_day": 10**400}},
        {"limits": {"tokens_per_day": float("nan")}},
        {"limits": {"tokens_per_day": float("inf")}},
        {"name": "\ud800"},
        {"metadata": {"\udfff": "x"}},
        {"metadata": {"deep": nested_list(70)}},
    ],
    ids=[
        "tokens_per_day 10^400",
        "NaN limit",
        "infinite limit",
        "lone surrogate name",
        "lone surrogate metadata key",
        "metadata nested 70 deep",
    ],
)
@pytest.mark.parametrize("request_id", [None, "hostile-retry-1"])
def test_keys_api_refuses_hostile_values_without_writing(stack, fields, request_id):
    before = scan_all()
    event = {"action": "create_key", "tenant": "hostile-keys", "consumer": "c", "plan": "free", **fields}
    if request_id:
        event["request_id"] = request_id
    response = stack.invoke_keys(event)
    assert response["ok"] is False
    assert response["error"]["code"] == "invalid_request", response
    assert scan_all() == before


def test_keys_api_over_the_invoke_emulation_refuses_hostile_json(stack):
    before = scan_all()
    raw = (
        b'{"action": "create_key", "tenant": "hostile-keys", "consumer": "c", "plan": "free", '
        b'"limits": {"tokens_per_day": 1' + b"0" * 400 + b"}}"
    )
    response = httpx.post(f"{stack.base_url}/2015-03-31/functions/quotagate-keys/invocations", content=raw, timeout=30)
    assert response.status_code == 200
    assert "x-amz-function-error" not in response.headers
    assert response.json()["error"]["code"] == "invalid_request"
    assert scan_all() == before
