"""The reservation bounds the bill, for every request shape a client can send (issue 8, items 1-2).

The mock bills like the real providers (``real_billing``: tools, schemas, images and audio are
prompt tokens) and can ignore the cap it is sent (``cap_field``). Everything runs through the real
proxy and the DynamoDB ledger on a single-threaded moto server. For every admitted request the
settled usage is at most what was reserved (top-ups included), and no window ever ends above its
limit; a refused request never reaches the model and costs nothing.
"""

from __future__ import annotations

import base64
import io
import wave
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack

PRICE = {"input_per_million": 2.5, "output_per_million": 10.0}
TIGHT_LIMITS = {"tokens_per_day": 1000, "usd_per_day": 0.005, "max_tokens_per_request": 64}
LONG_REPLY = 3000  # what the mock would generate if nothing capped it


def _openai_model(spec: str, **extra):
    return {"provider": "mock", "upstream_model": f"mock-gpt@real_billing=1{spec}", "price": PRICE, **extra}


MODELS = {
    **TEST_CONFIG["models"],
    "billed": _openai_model(""),
    "old-server": _openai_model("&cap_field=max_tokens"),
    "deaf": _openai_model("&cap_field=none&tokens=3000"),
    "reasoning": _openai_model("&cap_field=max_completion_tokens", max_output_field="max_completion_tokens"),
    "claude": {"provider": "mock-anthropic", "upstream_model": "claude-mock@real_billing=1", "price": PRICE},
    "claude-deaf": {
        "provider": "mock-anthropic",
        "upstream_model": "claude-mock@real_billing=1&cap_field=none&tokens=3000",
        "price": PRICE,
    },
    "nova": {"provider": "mock-bedrock", "upstream_model": "amazon.nova-mock-v1:0@real_billing=1", "price": PRICE},
    "nova-deaf": {
        "provider": "mock-bedrock",
        "upstream_model": "amazon.nova-mock-v1:0@real_billing=1&cap_field=none&tokens=3000",
        "price": PRICE,
    },
}
PROVIDERS = {
    **TEST_CONFIG["providers"],
    "mock-anthropic": {
        "type": "anthropic",
        "base_url": "${QG_MOCK_BASE_URL}/v1",
        "connect_timeout": 2,
        "read_timeout": 5,
    },
    "mock-bedrock": {
        "type": "bedrock",
        "base_url": "${QG_MOCK_BASE_URL}",
        "region": "us-east-1",
        "connect_timeout": 2,
        "read_timeout": 5,
    },
}
PLANS = {
    **TEST_CONFIG["plans"],
    "tight": {"limits": TIGHT_LIMITS, "models": "*", "default_max_tokens": 256},
    "roomy": {"limits": {"tokens_per_day": 100_000}, "models": "*", "default_max_tokens": 256},
    "room-600": {"limits": {"tokens_per_day": 600}, "models": "*", "default_max_tokens": 256},
    "usd-only": {"limits": {"usd_per_day": 1.0}, "models": "*", "default_max_tokens": 256},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    overrides = {"models": MODELS, "providers": PROVIDERS, "plans": PLANS}
    with gateway_stack(tmp_path_factory.mktemp("shapes"), overrides, token_delay=0.0005) as running:
        yield running


def post(stack, api_key, body, timeout=60):
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json=body,
        timeout=timeout,
        headers={"authorization": f"Bearer {api_key}"},
    )


def user(text="Tell me about lighthouses."):
    return [{"role": "user", "content": text}]


def tool(i: int, fields: int = 2) -> dict:
    properties = {
        f"field_{j}": {
            "type": "string",
            "description": f"The {j}th detail of request number {i}, "
            "written out in full so that the schema is as long as real ones are.",
        }
        for j in range(fields)
    }
    return {
        "type": "function",
        "function": {
            "name": f"lookup_{i}",
            "description": f"Look up record kind {i}.",
            "parameters": {"type": "object", "properties": properties},
        },
    }


def image(detail: str, url: str = "https://example.com/lighthouse.png") -> dict:
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


def tiny_png_data_url() -> str:
    return (
        "data:image/png;base64,"
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    )


def wav_base64(seconds: float) -> str:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(b"\0\0" * int(16_000 * seconds))
    return base64.b64encode(out.getvalue()).decode()


SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {
                f"part_{i}": {"type": "string", "description": "One part of the answer, in a full sentence."}
                for i in range(12)
            },
        },
    },
}

# name: (body without "model"/"mock_reply_tokens", model, expected status)
SHAPES: dict[str, tuple[dict, str, int]] = {
    "20 tools": ({"messages": user(), "tools": [tool(i, 8) for i in range(20)], "max_tokens": 16}, "billed", 400),
    "3 tools": ({"messages": user(), "tools": [tool(i) for i in range(3)], "max_tokens": 16}, "billed", 200),
    "legacy functions": (
        {"messages": user(), "functions": [tool(i)["function"] for i in range(3)], "max_tokens": 16},
        "billed",
        200,
    ),
    "tool call and result": (
        {
            "messages": [
                *user(),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup_1", "arguments": '{"field_0":"x"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "The record says: " + "beam " * 100},
            ],
            "tools": [tool(1)],
            "max_tokens": 16,
        },
        "billed",
        200,
    ),
    "10 remote images (high)": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Compare these."}, *[image("high") for _ in range(10)]],
                }
            ]
        },
        "billed",
        400,
    ),
    "one image (auto)": (
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe."}, image("auto")]}],
            "max_tokens": 16,
        },
        "billed",
        400,
    ),
    "two images (low)": (
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Describe."}, image("low"), image("low")]}
            ],
            "max_tokens": 16,
        },
        "billed",
        200,
    ),
    "audio (wav, 2 s)": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": wav_base64(2.0), "format": "wav"}}],
                }
            ],
            "max_tokens": 16,
        },
        "billed",
        200,
    ),
    "response_format schema": ({"messages": user(), "response_format": SCHEMA_FORMAT, "max_tokens": 16}, "billed", 200),
    "max_completion_tokens to a max_tokens-only server": (
        {"messages": user(), "max_completion_tokens": 16},
        "old-server",
        200,
    ),
    "both caps (16 and 5000)": (
        {"messages": user(), "max_completion_tokens": 16, "max_tokens": 5000},
        "old-server",
        200,
    ),
    "n=2": ({"messages": user(), "n": 2, "max_tokens": 16}, "billed", 200),
    "reasoning model, max_completion_tokens": ({"messages": user(), "max_completion_tokens": 16}, "reasoning", 200),
    "reasoning model, max_tokens": ({"messages": user(), "max_tokens": 16}, "reasoning", 200),
    "reasoning model, no cap": ({"messages": user()}, "reasoning", 200),
    "provider ignoring its cap": ({"messages": user(), "max_tokens": 16}, "deaf", 200),
    "provider ignoring its cap, no client cap": ({"messages": user()}, "deaf", 200),
    "anthropic tools": ({"messages": user(), "tools": [tool(i, 1) for i in range(2)], "max_tokens": 16}, "claude", 200),
    "anthropic ignoring its cap": ({"messages": user(), "max_tokens": 16}, "claude-deaf", 200),
    "anthropic image": (
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe."}, image("low")]}],
            "max_tokens": 16,
        },
        "claude",
        400,
    ),
    "bedrock tools": ({"messages": user(), "tools": [tool(i, 1) for i in range(2)], "max_tokens": 16}, "nova", 200),
    "bedrock ignoring its cap": ({"messages": user()}, "nova-deaf", 200),
    "bedrock image": (
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Describe."}, image("high", tiny_png_data_url())]}
            ],
            "max_tokens": 16,
        },
        "nova",
        400,
    ),
}


def reserved_and_settled(stack, response) -> tuple[int, int]:
    """Tokens reserved (top-ups included) and tokens settled for one request."""
    item = stack.wait_settled(response.headers["x-quotagate-request-id"])
    reserved = max(c["amount"] for c in item["charges"] if c["sk"].startswith("tokens_per_day#"))
    reserved += item.get("topped_up_tokens", 0)
    usage = item["usage"]
    return reserved, usage["prompt_tokens"] + usage["completion_tokens"]


def check_windows(stack, key) -> None:
    assert stack.quota_used(f"key#{key['key_id']}", "tokens_per_day") <= TIGHT_LIMITS["tokens_per_day"]
    assert stack.quota_used(f"key#{key['key_id']}", "usd_per_day") <= TIGHT_LIMITS["usd_per_day"] * 1e6


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_request_shape_is_bounded_by_its_reservation(stack, shape, stream):
    body, model, expected = SHAPES[shape]
    key = stack.create_key(tenant=f"shape-{list(SHAPES).index(shape)}-{stream}", plan="tight")
    calls_before = stack.mock.stats.snapshot()["chat_requests"]
    response = post(stack, key["api_key"], {**body, "model": model, "stream": stream, "mock_reply_tokens": LONG_REPLY})
    assert response.status_code == expected, response.text
    if expected != 200:
        error = response.json()["error"]
        assert error["message"] and error["code"]
        assert stack.mock.stats.snapshot()["chat_requests"] == calls_before, "a refused request reached the model"
        assert stack.quota_used(f"key#{key['key_id']}", "tokens_per_day") == 0
        return
    reserved, settled = reserved_and_settled(stack, response)
    assert settled <= reserved
    check_windows(stack, key)


def test_a_cap_above_the_per_request_limit_names_the_field_the_client_sent(stack):
    key = stack.create_key(tenant="shape-cap-name", plan="tight")
    for field in ("max_tokens", "max_completion_tokens"):
        response = post(stack, key["api_key"], {"model": "billed", "messages": user(), field: 5000})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == field and field in error["message"] and "5000" in error["message"]


def test_one_cap_reaches_the_provider_in_the_form_it_understands(stack):
    key = stack.create_key(tenant="shape-one-cap", plan="tight")
    for model, expected_field in (("billed", "max_tokens"), ("reasoning", "max_completion_tokens")):
        response = post(
            stack, key["api_key"], {"model": model, "messages": user(), "max_tokens": 10, "max_completion_tokens": 12}
        )
        assert response.status_code == 200, response.text
        sent = stack.mock.stats.last_request["body"]
        caps = {name: sent[name] for name in ("max_tokens", "max_completion_tokens") if name in sent}
        assert caps == {expected_field: 10}


def test_fifty_concurrent_requests_of_the_worst_shape_never_pass_the_limit(stack):
    key = stack.create_key(tenant="shape-burst", plan="tight")
    # tool_choice "none": the tools are billed, and the mock answers in (long) text rather than with a call.
    body = {
        "model": "deaf",
        "messages": user(),
        "tools": [tool(i) for i in range(3)],
        "tool_choice": "none",
        "mock_reply_tokens": LONG_REPLY,
        "stream": True,
    }

    def one(_):
        return post(stack, key["api_key"], body)

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(one, range(50)))
    assert {r.status_code for r in responses} <= {200, 429}
    admitted = [r for r in responses if r.status_code == 200]
    assert admitted
    for response in admitted:
        reserved, settled = reserved_and_settled(stack, response)
        assert settled <= reserved
    check_windows(stack, key)


def _answer(response, stream: bool) -> tuple[str, str | None, dict | None]:
    """(content, finish_reason, usage) of a JSON answer or of an SSE stream."""
    if not stream:
        data = response.json()
        return data["choices"][0]["message"]["content"], data["choices"][0]["finish_reason"], data.get("usage")
    import json

    content, finish, usage = [], None, None
    lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    for line in lines[:-1]:
        chunk = json.loads(line[6:])
        assert "error" not in chunk, chunk
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            content.append(choice["delta"].get("content") or "")
            finish = choice.get("finish_reason") or finish
    return "".join(content), finish, usage


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_without_a_cap_a_long_answer_arrives_whole_on_a_key_with_room(stack, stream):
    from quotagate import tokens

    key = stack.create_key(tenant=f"room-{stream}", plan="roomy")
    body = {"model": "mock-gpt", "messages": user(), "stream": stream, "mock_reply_tokens": 1500}
    if stream:
        body["stream_options"] = {"include_usage": True}
    response = post(stack, key["api_key"], body)
    assert response.status_code == 200
    content, finish, usage = _answer(response, stream)
    assert finish == "stop"
    assert usage is not None and usage["completion_tokens"] == 1500
    assert tokens.count_text(content) == 1500
    reserved, settled = reserved_and_settled(stack, response)
    assert settled <= reserved
    item = stack.wait_settled(response.headers["x-quotagate-request-id"])
    # The cap sent upstream (the target's max_output_tokens) was reserved whole, up front.
    assert reserved >= 4096 and "topped_up_tokens" not in item


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_without_a_cap_the_answer_ends_with_length_only_when_the_budget_is_spent(stack, stream):
    from quotagate import tokens

    key = stack.create_key(tenant=f"room-600-{stream}", plan="room-600")
    response = post(
        stack, key["api_key"], {"model": "mock-gpt", "messages": user(), "stream": stream, "mock_reply_tokens": 1500}
    )
    assert response.status_code == 200
    content, finish, _ = _answer(response, stream)
    assert finish == "length"
    reserved, settled = reserved_and_settled(stack, response)
    assert settled <= reserved <= 600
    # Cut because the budget was spent, not at an arbitrary default: nearly all of it was used.
    prompt = settled - tokens.count_text(content)
    assert tokens.count_text(content) >= 600 - prompt - 64
    assert stack.quota_used(f"key#{key['key_id']}", "tokens_per_day") <= 600


@pytest.mark.parametrize(("ttl", "write_factor"), [("5m", 1.25), ("1h", 2.0)])
def test_anthropic_prompt_cache_writes_are_priced_apart_and_covered_by_the_reservation(stack, ttl, write_factor):
    import math

    key = stack.create_key(tenant=f"cache-{ttl}", plan="roomy")
    marked = {
        "type": "text",
        "text": "A long system prompt about lighthouses. " * 20,
        "cache_control": {"type": "ephemeral", "ttl": ttl},
    }
    body = {
        "model": "claude",
        "messages": [{"role": "user", "content": [marked, {"type": "text", "text": "Why?"}]}],
        "max_tokens": 16,
    }
    response = post(stack, key["api_key"], body)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    written = usage["prompt_tokens_details"]["cache_creation_tokens"]
    assert written > 0 and usage["prompt_tokens_details"]["cache_creation_1h_tokens"] == (written if ttl == "1h" else 0)
    item = stack.wait_settled(response.headers["x-quotagate-request-id"])
    assert item["usage"]["cache_creation_tokens"] == written
    plain = usage["prompt_tokens"] - written
    expected = (
        plain * PRICE["input_per_million"]
        + written * write_factor * PRICE["input_per_million"]
        + usage["completion_tokens"] * PRICE["output_per_million"]
    )
    assert item["usage"]["usd_micros"] == math.ceil(round(expected, 6))


def test_a_cache_write_worst_case_is_inside_the_dollar_reservation(stack):
    key = stack.create_key(tenant="cache-bound", plan="usd-only")
    marked = {
        "type": "text",
        "text": "A long system prompt about lighthouses. " * 40,
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
    body = {
        "model": "claude",
        "messages": [{"role": "user", "content": [marked, {"type": "text", "text": "Why?"}]}],
        "max_tokens": 16,
    }
    response = post(stack, key["api_key"], body)
    assert response.status_code == 200, response.text
    item = stack.wait_settled(response.headers["x-quotagate-request-id"])
    reserved_usd = max(c["amount"] for c in item["charges"] if c["sk"].startswith("usd_per_day#"))
    assert item["usage"]["usd_micros"] <= reserved_usd
