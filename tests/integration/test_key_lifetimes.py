"""What a wrong, revoked, disabled, rotated or expired key can still do, and for how long — through
the API Gateway emulator WITH its authorizer cache on (300 s, as deployed) and the proxy's key-record
cache (15 s), on a fake clock: the times the README states are the times these tests move.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.integration.gateway_stack import FakeClock, GatewayStack, gateway_stack

AUTHORIZER_CACHE_SECONDS = 300
CHAT = {"model": "mock-gpt", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, clock) -> Iterator[GatewayStack]:
    with gateway_stack(tmp_path_factory.mktemp("lifetimes"), authorizer_cache_seconds=AUTHORIZER_CACHE_SECONDS,
                       clock=clock) as running:
        yield running


def call(stack: GatewayStack, api_key: str) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/chat/completions", json=CHAT,
                      headers={"Authorization": f"Bearer {api_key}"}, timeout=10)


def keys_action(stack: GatewayStack, action: str, **fields) -> dict:
    response = stack.invoke_keys({"action": action, **fields})
    assert response["ok"], response
    return response["result"]


# --- a wrong or unknown key is a 401 (the openai SDK's AuthenticationError) -----------------------


@pytest.mark.parametrize("credential", ["qg_garbage", "sk-not-ours", "unknown"])
def test_a_wrong_key_is_401_invalid_api_key(stack, credential):
    if credential == "unknown":  # well formed, valid checksum, no such key id
        from quotagate import apikeys

        credential = apikeys.new_key().plaintext
    response = call(stack, credential)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_the_openai_sdk_raises_authentication_error(stack):
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="qg_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert info.value.code == "invalid_api_key"


def test_a_key_not_allowed_the_model_is_still_403(stack):
    key = keys_action(stack, "create_key", tenant="t403", consumer="c", plan="free", allowed_models=["mock-omit"])
    response = call(stack, key["api_key"])
    assert response.status_code == 403, response.text


def test_the_function_url_path_answers_401_too(stack):
    from starlette.testclient import TestClient

    from functions.proxy.app import create_app

    with TestClient(create_app()) as client:
        response = client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer qg_wrong"})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
