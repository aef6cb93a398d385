"""What a wrong, revoked, disabled, rotated or expired key can still do, and for how long — through
the API Gateway emulator WITH its authorizer cache on (300 s, as deployed) and the proxy's key-record
cache (15 s), on a fake clock: the times the README states are the times these tests move.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx
import openai
import pytest

from quotagate.dal.key_cache import DEFAULT_TTL_SECONDS as KEY_RECORD_CACHE_SECONDS
from tests.helpers import FakeClock
from tests.integration.gateway_stack import GatewayStack, gateway_stack

if TYPE_CHECKING:
    from collections.abc import Iterator

AUTHORIZER_CACHE_SECONDS = 300
CHAT = {"model": "mock-gpt", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    # Starts at the real time: records written with the real clock (a rotation's grace deadline) compare sensibly.
    return FakeClock(time.time())


@pytest.fixture(scope="module")
def stack(tmp_path_factory, clock) -> Iterator[GatewayStack]:
    with gateway_stack(
        tmp_path_factory.mktemp("lifetimes"), authorizer_cache_seconds=AUTHORIZER_CACHE_SECONDS, clock=clock
    ) as running:
        yield running


def call(stack: GatewayStack, api_key: str) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    )


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
    # Anthropic's type, as every edge error has it: one body both SDKs read (quotagate.edge_errors).
    assert response.json()["error"]["type"] == "authentication_error"


def test_the_openai_sdk_raises_authentication_error(stack):
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="qg_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert info.value.code == "invalid_api_key"


def test_a_key_not_allowed_the_model_is_answered_as_if_the_model_did_not_exist(stack):
    # issue 18 item 7: a model outside the key's models is the 404 an unknown name gets (no existence oracle)
    key = keys_action(stack, "create_key", tenant="t403", consumer="c", plan="free", allowed_models=["mock-omit"])
    response = call(stack, key["api_key"])
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "model_not_found"


def test_the_function_url_path_answers_401_too(stack):
    from starlette.testclient import TestClient

    from functions.proxy.app import create_app

    with TestClient(create_app()) as client:
        response = client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer qg_wrong"})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"


# --- lifetimes: what the authorizer's cached Allow still lets through, and for how long ------------
# Every test first makes a request with the key, so that the emulated API Gateway holds a cached
# Allow for it (300 s) and the proxy a cached key record (15 s): the worst case for revocation.


def test_a_revoked_key_stops_within_the_key_record_cache_ttl(stack, clock):
    key = keys_action(stack, "create_key", tenant="life", consumer="revoked", plan="free")
    assert call(stack, key["api_key"]).status_code == 200
    keys_action(stack, "revoke_key", key_id=key["key_id"])
    clock.advance(KEY_RECORD_CACHE_SECONDS - 1)
    assert call(stack, key["api_key"]).status_code == 200  # cached Allow and cached record
    clock.advance(1)
    refused = call(stack, key["api_key"])
    assert refused.status_code == 401, refused.text  # the Allow is still cached: the proxy refuses
    assert refused.json()["error"]["code"] == "invalid_api_key"


def test_a_disabled_key_stops_within_the_key_record_cache_ttl_and_can_come_back(stack, clock):
    key = keys_action(stack, "create_key", tenant="life", consumer="disabled", plan="free")
    assert call(stack, key["api_key"]).status_code == 200
    keys_action(stack, "update_key", key_id=key["key_id"], status="disabled")
    clock.advance(KEY_RECORD_CACHE_SECONDS)
    assert call(stack, key["api_key"]).status_code == 401
    keys_action(stack, "update_key", key_id=key["key_id"], status="active")
    clock.advance(KEY_RECORD_CACHE_SECONDS)
    assert call(stack, key["api_key"]).status_code == 200


def test_an_expired_key_stops_at_its_expiry(stack, clock):
    key = keys_action(
        stack, "create_key", tenant="life", consumer="expiring", plan="free", expires_at=int(clock()) + 100
    )
    assert call(stack, key["api_key"]).status_code == 200
    clock.now = key["expires_at"] - 1
    assert call(stack, key["api_key"]).status_code == 200
    clock.now = key["expires_at"]
    assert call(stack, key["api_key"]).status_code == 401  # cached Allow, cached record: still refused


def test_rotation_without_grace_revokes_the_old_secret_within_the_key_record_cache_ttl(stack, clock):
    """Issue 7: the old secret got 200s through the authorizer's cached Allow for ~300 s."""
    key = keys_action(stack, "create_key", tenant="life", consumer="rotated", plan="free")
    old = key["api_key"]
    assert call(stack, old).status_code == 200
    new = keys_action(stack, "rotate_key", key_id=key["key_id"], grace_seconds=0)["api_key"]
    # The new secret works at once, even while the proxy still holds the old record.
    assert call(stack, new).status_code == 200
    clock.advance(KEY_RECORD_CACHE_SECONDS)
    for _ in range(3):
        refused = call(stack, old)  # the authorizer's Allow for the old secret is still cached
        assert refused.status_code == 401, refused.text
    assert call(stack, new).status_code == 200


def test_rotation_with_grace_keeps_the_old_secret_until_the_grace_ends(stack, clock):
    key = keys_action(stack, "create_key", tenant="life", consumer="graced", plan="free")
    old = key["api_key"]
    assert call(stack, old).status_code == 200
    rotated = keys_action(stack, "rotate_key", key_id=key["key_id"], grace_seconds=600)
    grace_until = keys_action(stack, "get_key", key_id=key["key_id"])["rotation_grace_until"]
    assert clock() < grace_until - 1
    clock.advance(KEY_RECORD_CACHE_SECONDS)
    assert call(stack, old).status_code == 200  # in grace: served, from the cached Allow
    clock.now = grace_until - 1
    assert call(stack, old).status_code == 200  # the authorizer's cache expired: asked again, still in grace
    clock.now = grace_until
    assert call(stack, old).status_code == 401  # its Allow is cached, but the grace is over
    assert call(stack, rotated["api_key"]).status_code == 200


def test_a_second_rotation_ends_the_first_grace(stack, clock):
    key = keys_action(stack, "create_key", tenant="life", consumer="twice", plan="free")
    first = key["api_key"]
    assert call(stack, first).status_code == 200
    # A long grace: the keys function dates it with the real clock, which earlier tests' jumps of
    # the fake clock have left behind.
    second = keys_action(stack, "rotate_key", key_id=key["key_id"], grace_seconds=86400)["api_key"]
    assert call(stack, second).status_code == 200
    keys_action(stack, "rotate_key", key_id=key["key_id"], grace_seconds=86400)
    clock.advance(KEY_RECORD_CACHE_SECONDS)
    assert call(stack, first).status_code == 401
    assert call(stack, second).status_code == 200  # the previous secret, in its grace


def test_an_allow_cached_without_a_fingerprint_is_checked_by_the_proxy(stack):
    """An Allow cached by an authorizer older than fingerprints: the proxy checks the presented key."""
    import json

    from starlette.testclient import TestClient

    from functions.proxy.app import create_app

    key = keys_action(stack, "create_key", tenant="life", consumer="legacy", plan="free")
    legacy = {
        "authorizer": {
            "tenant": "life",
            "consumer": "legacy",
            "key_id": key["key_id"],
            "plan": "free",
            "auth_type": "api_key",
        }
    }
    context = {"x-amzn-request-context": json.dumps(legacy)}
    with TestClient(create_app()) as client:
        refused = client.post("/v1/chat/completions", json=CHAT, headers={**context, "authorization": "Bearer"})
        assert refused.status_code == 401, refused.text
        served = client.post(
            "/v1/chat/completions", json=CHAT, headers={**context, "authorization": f"Bearer {key['api_key']}"}
        )
        assert served.status_code == 200, served.text


def test_a_jwt_is_refused_from_its_expiry_even_with_a_cached_allow(stack, clock):
    """The authorizer's context carries when the token stops being accepted; the proxy refuses it
    from then on, although API Gateway would keep serving the cached Allow for up to 300 s."""
    import json

    from starlette.testclient import TestClient

    from functions.proxy.app import create_app, default_services
    from quotagate.identity import Identity, jwt_key_id

    expires_at = int(clock()) + 60
    identity = Identity("life", "user-1", jwt_key_id("life", "user-1"), "free", "jwt", expires_at=expires_at)
    context = {"x-amzn-request-context": json.dumps({"authorizer": identity.to_context()})}
    with TestClient(create_app(lambda: default_services(clock=clock))) as client:
        assert client.post("/v1/chat/completions", json=CHAT, headers=context).status_code == 200
        clock.now = expires_at
        refused = client.post("/v1/chat/completions", json=CHAT, headers=context)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_api_key"
