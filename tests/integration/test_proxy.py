"""The proxy through the local API Gateway emulator: real authorizer, real app, moto, mock model."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from quotagate import tokens
from tests.integration.gateway_stack import gateway_stack
from tests.integration.refusal_counts import wait_requests_counted

MESSAGES = [{"role": "user", "content": "Write a haiku about quotas."}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("proxy"), keepalive_seconds=0.2) as running:
        yield running


@pytest.fixture
def key(stack, request):
    return stack.create_key(tenant=f"t-{request.node.name[:40]}")


def post(stack, api_key, body, **headers):
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json=body,
        timeout=30,
        headers={"authorization": f"Bearer {api_key}", **headers},
    )


def sse_data(text: str) -> list:
    events = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line[6:]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_non_stream_completion_with_real_usage_and_ratelimit_headers(stack, key):
    response = post(stack, key["api_key"], {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "mock-gpt"
    assert body["usage"]["prompt_tokens"] == tokens.chat_prompt_tokens(MESSAGES)
    assert body["usage"]["completion_tokens"] == 10
    assert body["choices"][0]["finish_reason"] == "length"
    assert response.headers["x-ratelimit-limit-requests"] == "1000"
    assert response.headers["x-ratelimit-limit-tokens"] == "100000"
    assert "x-ratelimit-remaining-tokens" in response.headers


def test_stream_passes_chunks_and_hides_the_injected_usage_chunk(stack, key):
    response = post(stack, key["api_key"], {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "max_tokens": 5})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["choices"] for chunk in chunks), "the usage-only chunk must not reach this client"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert tokens.count_text(text) == 5


def test_stream_usage_chunk_is_kept_when_the_client_asks(stack, key):
    response = post(
        stack,
        key["api_key"],
        {
            "model": "mock-gpt",
            "messages": MESSAGES,
            "stream": True,
            "max_tokens": 5,
            "stream_options": {"include_usage": True},
        },
    )
    chunks = sse_data(response.text)[:-1]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "mock-gpt"}, 400, "invalid_value"),
        ({"model": "no-such-model", "messages": MESSAGES}, 404, "model_not_found"),
        ({"model": "mock-secret", "messages": MESSAGES}, 404, "model_not_found"),  # beyond the plan: as if absent
        ({"model": "mock-gpt", "messages": MESSAGES, "max_tokens": -1}, 400, "invalid_value"),
    ],
)
def test_bad_requests_never_reach_the_model_and_cost_nothing(stack, key, body, status, code):
    before = stack.mock.stats.snapshot()["chat_requests"]
    response = post(stack, key["api_key"], body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
    assert stack.mock.stats.snapshot()["chat_requests"] == before
    # Counted as one request (issue 18, item 6), and nothing more: no tokens.
    assert wait_requests_counted(stack, f"key#{key['key_id']}", 1) == 1
    assert stack.quota_used(f"key#{key['key_id']}", "tokens_per_minute") == 0


def test_invalid_json_and_oversize_bodies(stack, key):
    headers = {"authorization": f"Bearer {key['api_key']}", "content-type": "application/json"}
    bad = httpx.post(f"{stack.base_url}/v1/chat/completions", content=b"{nope", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    huge = httpx.post(
        f"{stack.base_url}/v1/chat/completions", content=b"x" * (5 * 1024 * 1024), headers=headers, timeout=30
    )
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "request_too_large"


def test_identity_errors_have_api_gateway_semantics(stack, key):
    body = {"model": "mock-gpt", "messages": MESSAGES}
    missing = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body)
    assert missing.status_code == 401
    # The authorizer's Deny is API Gateway's ACCESS_DENIED, configured (and emulated) as a 401.
    assert post(stack, "qg_garbage", body).status_code == 401
    forged = key["api_key"][:-1] + ("A" if key["api_key"][-1] != "A" else "B")
    assert post(stack, forged, body).status_code == 401
    assert stack.invoke_keys({"action": "revoke_key", "key_id": key["key_id"]})["ok"]
    assert post(stack, key["api_key"], body).status_code == 401


def test_client_supplied_identity_headers_are_ignored(stack, key):
    other = stack.create_key(tenant="victim")
    spoofed_context = json.dumps(
        {"authorizer": {"tenant": "victim", "consumer": "c", "key_id": other["key_id"], "plan": "pro"}}
    )
    response = post(
        stack,
        key["api_key"],
        {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 3},
        **{"x-tenant-id": "victim", "x-consumer-id": "someone", "x-amzn-request-context": spoofed_context},
    )
    assert response.status_code == 200
    assert stack.quota_used(f"key#{key['key_id']}", "requests_per_minute") == 1
    assert stack.quota_used(f"key#{other['key_id']}", "requests_per_minute") == 0
    forwarded = stack.mock.stats.last_request["headers"]
    assert "x-tenant-id" not in forwarded and "x-amzn-request-context" not in forwarded


def test_models_lists_what_this_key_may_call(stack, request):
    limited = stack.create_key(tenant="models", allowed_models=["mock-gpt"])
    response = httpx.get(f"{stack.base_url}/v1/models", headers={"authorization": f"Bearer {limited['api_key']}"})
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["mock-gpt"]
    denied = post(stack, limited["api_key"], {"model": "mock-omit", "messages": MESSAGES})
    assert denied.status_code == 404 and denied.json()["error"]["code"] == "model_not_found"


def test_keepalive_comments_flow_while_the_upstream_is_silent(stack, key):
    body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "max_tokens": 3, "mock_token_delay": 0.7}
    response = post(stack, key["api_key"], body)
    assert response.status_code == 200
    assert ": ping" in response.text
    assert sse_data(response.text)[-1] == "[DONE]"


def test_chunks_are_streamed_not_buffered(stack, key):
    body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "max_tokens": 12, "mock_token_delay": 0.05}
    arrivals = []
    with httpx.stream(
        "POST",
        f"{stack.base_url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key['api_key']}"},
        timeout=30,
    ) as response:
        start = time.monotonic()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) >= 12
    assert arrivals[-1] - arrivals[0] > 0.3, arrivals


def test_upstream_error_before_first_byte_is_an_error_status(stack, key):
    for stream in (False, True):
        response = post(stack, key["api_key"], {"model": "mock-500", "messages": MESSAGES, "stream": stream})
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_error"


def test_mid_stream_drop_ends_with_an_error_event(stack, key):
    response = post(stack, key["api_key"], {"model": "mock-drop", "messages": MESSAGES, "stream": True})
    assert response.status_code == 200
    events = sse_data(response.text)
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "upstream_stream_interrupted"


def test_client_disconnect_cancels_the_upstream_call(stack, key):
    stats = stack.mock.stats
    before = stats.snapshot()["client_disconnects"]
    body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "max_tokens": 200, "mock_token_delay": 0.05}
    with httpx.stream(
        "POST",
        f"{stack.base_url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key['api_key']}"},
        timeout=30,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break
    assert stats.wait_for(lambda s: s["client_disconnects"] > before, timeout=5)


SIGV4 = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261130/us-east-1/lambda/aws4_request, Signature=ff"


def test_function_url_path_validates_the_key_itself(stack, key, monkeypatch):
    """No authorizer ran: the proxy applies the authorizer's rules (credential headers only)."""
    from starlette.testclient import TestClient

    from functions.proxy.app import create_app
    from quotagate import settings

    monkeypatch.setenv(settings.IDENTITY_SOURCES, "Authorization")
    with TestClient(create_app()) as client:
        body = {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 2}
        assert client.post("/v1/chat/completions", json=body).status_code == 401
        assert (
            client.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer qg_nope"}).status_code
            == 401
        )
        # Not an identity source: never read, even with nothing else presented.
        refused = client.post("/v1/chat/completions", json=body, headers={"x-api-key": key["api_key"]})
        assert refused.status_code == 401, refused.text
        assert "Authorization: Bearer <key>" in refused.json()["error"]["message"]
        refused = client.post(
            "/v1/chat/completions", json=body, headers={"authorization": "Bearer", "x-api-key": key["api_key"]}
        )
        assert refused.status_code == 401, refused.text
        ok = client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key['api_key']}"})
        assert ok.status_code == 200, ok.text
        assert client.get("/health").json() == {"status": "ok"}


def test_function_url_path_with_sigv4_and_x_api_key(stack, key, monkeypatch):
    """IAM-signed callers put their SigV4 signature in Authorization: they send the key in x-api-key
    (a credential header by default); the signature itself is never taken for a key."""
    from starlette.testclient import TestClient

    from functions.proxy.app import create_app
    from quotagate import settings

    body = {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 2}
    headers = {"authorization": SIGV4, "x-api-key": key["api_key"]}
    monkeypatch.setenv(settings.IDENTITY_SOURCES, "Authorization")
    with TestClient(create_app()) as client:
        assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 401
    monkeypatch.delenv(settings.IDENTITY_SOURCES)
    with TestClient(create_app()) as client:
        ok = client.post("/v1/chat/completions", json=body, headers=headers)
        assert ok.status_code == 200, ok.text
