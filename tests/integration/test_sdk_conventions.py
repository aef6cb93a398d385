"""What client SDKs read besides the answer: a request id on every response, model retrieval, a
model listing with every callable name, and stream chunks without ``"usage": null`` noise."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack

MESSAGES = [{"role": "user", "content": "Say something short."}]
PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}
CONFIG = {
    "models": {
        **TEST_CONFIG["models"],
        "mock-dated": {"provider": "mock", "upstream_model": "mock-gpt", "price": PRICE, "created": 1721172741},
        # The free plan does not include this alias; it is served to free keys by downgrade.
        "chat-premium": {
            "targets": [{"provider": "mock", "upstream_model": "mock-gpt@tokens=5", "price": PRICE}],
            "on_tier_mismatch": "downgrade",
            "downgrade_to": "mock-gpt",
        },
    },
    "plans": {
        "free": {
            "limits": {"requests_per_minute": 1000},
            "default_max_tokens": 16,
            "models": ["mock-gpt", "mock-dated", "chat-premium"],
        },
        "pro": {"limits": {}, "models": "*", "default_max_tokens": 16},
    },
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("sdk"), config_overrides=CONFIG) as running:
        yield running


@pytest.fixture(scope="module")
def api_key(stack):
    return stack.create_key(tenant="sdk-conventions")["api_key"]


def call(stack, method, path, api_key=None, **kwargs):
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.request(method, f"{stack.base_url}{path}", headers=headers, timeout=30, **kwargs)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/chat/completions", {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 3}, 200),
        ("POST", "/v1/chat/completions", {"model": "mock-gpt", "messages": MESSAGES, "stream": True}, 200),
        ("POST", "/v1/chat/completions", {"model": "no-such-model", "messages": MESSAGES}, 404),
        ("POST", "/v1/chat/completions", {"model": "mock-gpt"}, 400),
        ("POST", "/v1/embeddings", {"model": "mock-gpt", "input": "hello"}, 200),
        ("GET", "/v1/models", None, 200),
        ("GET", "/v1/nothing-here", None, 404),
    ],
)
def test_every_response_carries_x_request_id(stack, api_key, method, path, body, status):
    response = call(stack, method, path, api_key, json=body)
    assert response.status_code == status, response.text
    request_id = response.headers.get("x-request-id")
    assert request_id, dict(response.headers)
    if "x-quotagate-request-id" in response.headers:
        assert response.headers["x-quotagate-request-id"] == request_id


def test_request_ids_differ_between_requests(stack, api_key):
    ids = {call(stack, "GET", "/v1/models", api_key).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_models_lists_every_callable_name_with_a_created_time(stack, api_key):
    response = call(stack, "GET", "/v1/models", api_key)
    assert response.status_code == 200
    listing = {m["id"]: m for m in response.json()["data"]}
    assert set(listing) == {"mock-gpt", "mock-dated", "chat-premium"}
    assert listing["mock-dated"]["created"] == 1721172741
    assert all(isinstance(m["created"], int) and m["created"] > 1_600_000_000 for m in listing.values())
    # What the listing promises is callable: the downgraded alias answers.
    served = call(
        stack,
        "POST",
        "/v1/chat/completions",
        api_key,
        json={"model": "chat-premium", "messages": MESSAGES, "max_tokens": 2},
    )
    assert served.status_code == 200, served.text


def test_retrieve_one_model(stack, api_key):
    response = call(stack, "GET", "/v1/models/mock-dated", api_key)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "mock-dated", "object": "model", "created": 1721172741, "owned_by": "mock"}


@pytest.mark.parametrize("name", ["mock-omit", "no-such-model"])
def test_retrieve_a_model_the_key_may_not_call_is_404(stack, api_key, name):
    response = call(stack, "GET", f"/v1/models/{name}", api_key)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert response.headers.get("x-request-id")


def test_retrieve_needs_a_key(stack):
    assert call(stack, "GET", "/v1/models/mock-gpt").status_code == 401


def test_stream_chunks_carry_no_usage_field_unless_asked(stack, api_key):
    response = call(
        stack,
        "POST",
        "/v1/chat/completions",
        api_key,
        json={"model": "mock-gpt", "messages": MESSAGES, "stream": True, "max_tokens": 4},
    )
    assert response.status_code == 200
    chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert chunks and all("usage" not in c for c in chunks), chunks[:2]


def test_stream_chunks_keep_usage_when_asked(stack, api_key):
    response = call(
        stack,
        "POST",
        "/v1/chat/completions",
        api_key,
        json={
            "model": "mock-gpt",
            "messages": MESSAGES,
            "stream": True,
            "max_tokens": 4,
            "stream_options": {"include_usage": True},
        },
    )
    chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert chunks[-1]["choices"] == []
