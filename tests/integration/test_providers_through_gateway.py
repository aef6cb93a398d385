"""Every provider behind the same OpenAI surface, with exact quota settlement whichever one served:
OpenAI-compatible, Anthropic Messages and Bedrock Converse (all spoken by the mock model server),
failover between them, and embeddings."""

from __future__ import annotations

import json
import math
import time

import httpx
import pytest

from tests.integration.gateway_stack import gateway_stack, mock_providers

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three rivers."}]
PRICES = {"openai": (1.0, 2.0), "anthropic": (3.0, 15.0), "bedrock": (0.5, 1.5)}


def price(provider):
    return {"input_per_million": PRICES[provider][0], "output_per_million": PRICES[provider][1]}


CONFIG = {
    "providers": mock_providers(),
    "models": {
        "via-openai": {"provider": "openai", "upstream_model": "mock-gpt", "price": price("openai")},
        "via-anthropic": {"provider": "anthropic", "upstream_model": "claude-mock", "price": price("anthropic")},
        "via-bedrock": {"provider": "bedrock", "upstream_model": "amazon.nova-mock-v1:0", "price": price("bedrock")},
        "chat-failover": {
            "targets": [
                {"provider": "openai", "upstream_model": "mock-gpt@status=500", "price": price("openai")},
                {
                    "provider": "bedrock",
                    "upstream_model": "amazon.nova-mock-v1:0@status=503",
                    "price": price("bedrock"),
                },
                {"provider": "anthropic", "upstream_model": "claude-mock", "price": price("anthropic")},
            ]
        },
        "embed": {"provider": "openai", "upstream_model": "mock-embed", "price": price("openai")},
        "embed-failover": {
            "targets": [
                {"provider": "openai", "upstream_model": "mock-embed@status=503", "price": price("openai")},
                {"provider": "openai", "upstream_model": "mock-embed", "price": price("openai")},
            ]
        },
        "claude-only": {"provider": "anthropic", "upstream_model": "claude-mock", "price": price("anthropic")},
    },
    "plans": {
        "metered": {
            "limits": {"tokens_per_minute": 1000000, "usd_per_day": 100},
            "models": "*",
            "default_max_tokens": 32,
        }
    },
    "default_plan": "metered",
}
PROVIDER_OF = {"via-openai": "openai", "via-anthropic": "anthropic", "via-bedrock": "bedrock"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("providers"), CONFIG, token_delay=0.002) as running:
        yield running


@pytest.fixture
def key(stack):
    import uuid

    return stack.create_key(tenant=f"prov-{uuid.uuid4().hex[:12]}", plan="metered")


def post(stack, key, path, body):
    return httpx.post(
        f"{stack.base_url}/v1/{path}", json=body, timeout=30, headers={"authorization": f"Bearer {key['api_key']}"}
    )


def micro_usd(provider, prompt, completion):
    input_price, output_price = PRICES[provider]
    return math.ceil(round(prompt * input_price + completion * output_price, 6))


def stream_result(text):
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    usage = next(c["usage"] for c in chunks if c.get("usage"))
    return chunks, content, usage


def assert_settled_exactly(stack, response, key, provider, usage):
    stack.wait_settled(response.headers["x-quotagate-request-id"])
    pk = f"key#{key['key_id']}"
    assert stack.quota_used(pk, "tokens_per_minute") == usage["prompt_tokens"] + usage["completion_tokens"]
    assert stack.quota_used(pk, "usd_per_day") == micro_usd(
        provider, usage["prompt_tokens"], usage["completion_tokens"]
    )


@pytest.mark.parametrize("model", sorted(PROVIDER_OF))
def test_non_stream_answer_has_the_same_shape_whichever_provider(stack, key, model):
    response = post(stack, key, "chat/completions", {"model": model, "messages": MESSAGES, "max_tokens": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 7
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 7
    assert response.headers["x-quotagate-target"].startswith(PROVIDER_OF[model] + "/")
    assert_settled_exactly(stack, response, key, PROVIDER_OF[model], body["usage"])


@pytest.mark.parametrize("model", sorted(PROVIDER_OF))
def test_stream_answer_has_the_same_shape_whichever_provider(stack, key, model):
    response = post(
        stack,
        key,
        "chat/completions",
        {
            "model": model,
            "messages": MESSAGES,
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.status_code == 200, response.text
    assert response.text.rstrip().endswith("data: [DONE]")
    chunks, content, usage = stream_result(response.text)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content and usage["completion_tokens"] == 6
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == ["length"]
    assert_settled_exactly(stack, response, key, PROVIDER_OF[model], usage)


@pytest.mark.parametrize("stream", [False, True])
def test_failover_across_providers_settles_exactly_at_the_serving_price(stack, key, stream):
    body = {"model": "chat-failover", "messages": MESSAGES, "max_tokens": 5, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    response = post(stack, key, "chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.headers["x-quotagate-target"] == "anthropic/claude-mock"
    usage = stream_result(response.text)[2] if stream else response.json()["usage"]
    assert_settled_exactly(stack, response, key, "anthropic", usage)


def test_embeddings_are_metered_and_settled(stack, key):
    texts = ["first document", "a second, longer document about rivers"]
    # The counters read below are this minute's: keep the request and the read in one minute.
    while time.time() % 60 > 50:
        time.sleep(0.5)
    response = post(stack, key, "embeddings", {"model": "embed", "input": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["index"] for item in body["data"]] == [0, 1]
    usage = body["usage"]
    assert stack.quota_used(f"key#{key['key_id']}", "tokens_per_minute") == usage["prompt_tokens"]
    assert stack.quota_used(f"key#{key['key_id']}", "usd_per_day") == micro_usd("openai", usage["prompt_tokens"], 0)
    assert response.headers["x-quotagate-target"] == "openai/mock-embed"


def test_embeddings_fail_over(stack, key):
    response = post(stack, key, "embeddings", {"model": "embed-failover", "input": "hello"})
    assert response.status_code == 200, response.text
    assert response.headers["x-quotagate-target"] == "openai/mock-embed"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "claude-only", "input": "x"}, "unsupported_for_model"),
        ({"model": "embed", "input": []}, "invalid_value"),
        ({"model": "embed", "input": [1.5]}, "invalid_value"),
        ({"model": "embed"}, "invalid_value"),
    ],
)
def test_embeddings_bad_requests_cost_nothing_and_call_nothing(stack, key, body, code):
    before = stack.mock.stats.snapshot()["chat_requests"]
    response = post(stack, key, "embeddings", body)
    assert response.status_code == 400 and response.json()["error"]["code"] == code
    assert stack.mock.stats.snapshot()["chat_requests"] == before
    assert stack.quota_used(f"key#{key['key_id']}", "tokens_per_minute") == 0


@pytest.mark.parametrize(("model", "factor"), [("via-openai", 1.0), ("via-anthropic", 1.3), ("via-bedrock", 1.3)])
def test_prompt_reservation_has_a_margin_for_other_tokenizers(stack, key, model, factor):
    """cl100k counts OpenAI prompts exactly; Claude's and Bedrock models' tokenizers count more for
    the same text, so the reservation scales the estimate to stay an upper bound. The output the
    gateway meters (in cl100k) is scaled the same way, so an answer within its cap is never cut."""
    from quotagate import tokens

    response = post(stack, key, "chat/completions", {"model": model, "messages": MESSAGES, "max_tokens": 7})
    assert response.status_code == 200
    item = stack.wait_settled(response.headers["x-quotagate-request-id"])
    reserved = {charge["sk"].split("#")[0]: charge["amount"] for charge in item["charges"]}
    assert reserved["tokens_per_minute"] == (
        math.ceil(tokens.chat_prompt_tokens(MESSAGES) * factor) + math.ceil(7 * factor)
    )
    assert_settled_exactly(stack, response, key, PROVIDER_OF[model], response.json()["usage"])
