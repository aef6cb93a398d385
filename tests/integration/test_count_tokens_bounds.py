"""count_tokens has its own bounded body size (issue 18, item 6): it reserves nothing and calls no
model, so each byte it accepts is gateway CPU for free. 41 texts of 99,999 characters (4.1 MB, under
the 4 MB-ish model-endpoint limit's neighbour) cost about 1 s of CPU; the endpoint now refuses a body
over COUNT_TOKENS_MAX_BODY_BYTES before parsing it, and still counts a long conversation under it."""

from __future__ import annotations

import json

import httpx
import pytest

from quotagate.protocols.anthropic_messages import COUNT_TOKENS_MAX_BODY_BYTES
from tests.integration.gateway_stack import gateway_stack

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("count-bounds")) as running:
        yield running


@pytest.fixture(scope="module")
def key(stack):
    return stack.create_key(tenant="counter", plan="free")["api_key"]


def count(stack, key, texts):
    body = {
        "model": "mock-gpt",
        "messages": [{"role": "user", "content": [{"type": "text", "text": t} for t in texts]}],
    }
    return httpx.post(
        f"{stack.base_url}/v1/messages/count_tokens",
        content=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=60,
    )


def test_a_huge_count_tokens_body_is_refused_before_it_is_parsed(stack, key):
    response = count(stack, key, ["word " * 20_000] * 41)  # 41 texts of 100,000 characters
    assert response.status_code == 413, response.text[:300]
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "request_too_large"
    assert str(COUNT_TOKENS_MAX_BODY_BYTES) in response.json()["error"]["message"]


def test_a_long_conversation_under_the_bound_is_counted(stack, key):
    texts = ["word " * 19_000] * 10  # about 950 KB: a 200k-token context fits
    response = count(stack, key, texts)
    assert response.status_code == 200, response.text[:300]
    assert response.json()["input_tokens"] >= 190_000
