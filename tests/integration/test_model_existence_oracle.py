"""A model that exists but is not in the key's plan is answered exactly like a name that does not
exist, on every endpoint (issue 18, item 7): the answers never tell a caller which models the
gateway serves beyond its reach (it was 403 on the endpoints, 404 on /v1/models/{id})."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.gateway_stack import gateway_stack

pytestmark = pytest.mark.timeout(120)

HIDDEN = "mock-secret"  # configured, not in the free plan
MISSING = "mock-nothing"  # not configured at all
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("oracle")) as running:
        yield running


@pytest.fixture(scope="module")
def key(stack):
    return stack.create_key(tenant="oracle", plan="free")["api_key"]


def call(stack, key, endpoint, model):
    headers = {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    bodies = {
        "chat/completions": {"model": model, "messages": MESSAGES, "max_tokens": 2},
        "embeddings": {"model": model, "input": "hi"},
        "responses": {"model": model, "input": "hi", "max_output_tokens": 16},
        "messages": {"model": model, "messages": MESSAGES, "max_tokens": 2},
        "messages/count_tokens": {"model": model, "messages": MESSAGES},
    }
    url = f"{stack.base_url}/v1/{endpoint}"
    if endpoint == "models":
        return httpx.get(f"{url}/{model}", headers=headers, timeout=30)
    return httpx.post(url, json=bodies[endpoint], headers=headers, timeout=30)


@pytest.mark.parametrize(
    "endpoint", ["chat/completions", "embeddings", "responses", "messages", "messages/count_tokens", "models"]
)
def test_a_model_beyond_the_plan_looks_like_no_model(stack, key, endpoint):
    hidden, missing = call(stack, key, endpoint, HIDDEN), call(stack, key, endpoint, MISSING)
    assert missing.status_code == 404, missing.text
    assert hidden.status_code == missing.status_code, hidden.text
    assert hidden.text.replace(HIDDEN, "<model>") == missing.text.replace(MISSING, "<model>")
    assert "plan" not in hidden.text.lower()
