"""``POST /v1/messages`` to an Anthropic target is passed through natively: what the client sent
(thinking, cache_control, top_k, metadata, stop sequences, images, documents, tool ids, signatures)
reaches the target unchanged, and what the target answered (thinking blocks with their signatures,
prompt-cache usage, Anthropic's typed stream events) reaches the client unchanged, with the quota
counters settled to exactly what the target billed. Through the real proxy (API Gateway emulator,
authorizer, moto) against the mock model server."""

from __future__ import annotations

import base64
import json
import math
import uuid

import anthropic
import httpx
import pytest

from quotagate_tools.mock.anthropic import THINKING_TOKENS, thinking_signature
from tests.integration.gateway_stack import gateway_stack

PRICE = {"input_per_million": 3.0, "output_per_million": 15.0}
CACHE_WRITE_5M, CACHE_WRITE_1H, CACHE_READ = 1.25, 2.0, 0.1


def anthropic_provider() -> dict:
    return {"type": "anthropic", "base_url": "${QG_MOCK_BASE_URL}/v1", "connect_timeout": 2, "read_timeout": 30}


CONFIG = {
    "providers": {
        "anthropic": anthropic_provider(),
        "openai": {"type": "openai", "base_url": "${QG_MOCK_BASE_URL}/v1", "connect_timeout": 2, "read_timeout": 30},
    },
    "models": {
        "claude": {"provider": "anthropic", "upstream_model": "claude-mock", "price": PRICE},
        "claude-billed": {"provider": "anthropic", "upstream_model": "claude-mock@real_billing", "price": PRICE},
        # A target that ignores max_tokens: the gateway's metering must end the answer itself.
        "claude-runaway": {"provider": "anthropic", "upstream_model": "claude-mock@cap_field=none", "price": PRICE},
        "claude-then-gpt": {
            "targets": [
                {"provider": "anthropic", "upstream_model": "claude-mock@status=503", "price": PRICE},
                {"provider": "openai", "upstream_model": "mock-gpt", "price": PRICE},
            ],
        },
    },
    "plans": {
        "metered": {
            "limits": {"tokens_per_day": 10_000_000, "usd_per_day": 100},
            "models": "*",
            "default_max_tokens": 32,
        },
    },
    "default_plan": "metered",
}
TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "cache_control": {"type": "ephemeral"},
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
THINKING = {"type": "enabled", "budget_tokens": 1024}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("native"), CONFIG, token_delay=0.001) as running:
        yield running


@pytest.fixture
def key(stack):
    return stack.create_key(tenant=f"native-{uuid.uuid4().hex[:12]}", plan="metered")


def sdk(stack, key) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, auth_token=key["api_key"], api_key=None, max_retries=0)


def post(stack, key, body):
    return httpx.post(
        f"{stack.base_url}/v1/messages", json=body, timeout=30, headers={"authorization": f"Bearer {key['api_key']}"}
    )


def used(stack, key) -> tuple[int, int]:
    scope = f"key#{key['key_id']}"
    return stack.quota_used(scope, "tokens_per_day"), stack.quota_used(scope, "usd_per_day")


def billed_micro_usd(usages) -> int:
    """What the target's usage costs at Anthropic's prices (cache writes and reads apart)."""
    total = 0
    for usage in usages:
        creation = usage["cache_creation"] if isinstance(usage.get("cache_creation"), dict) else {}
        written_1h = creation.get("ephemeral_1h_input_tokens", 0)
        written = usage["cache_creation_input_tokens"]
        units = (
            usage["input_tokens"]
            + CACHE_WRITE_5M * (written - written_1h)
            + CACHE_WRITE_1H * written_1h
            + CACHE_READ * usage["cache_read_input_tokens"]
        )
        total += math.ceil(
            round(units * PRICE["input_per_million"] + usage["output_tokens"] * PRICE["output_per_million"], 6)
        )
    return total


def billed_tokens(usage: dict) -> int:
    return (
        usage["input_tokens"]
        + usage["cache_creation_input_tokens"]
        + usage["cache_read_input_tokens"]
        + usage["output_tokens"]
    )


def sse_events(text: str) -> list[dict]:
    """The data of every event, checking that each ``event:`` line names its data's type."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        if "data" in lines:
            data = json.loads(lines["data"])
            assert lines.get("event") == data["type"], block
            events.append(data)
    return events


def rich_request(first_answer: list[dict], salt: str = "") -> dict:
    """A second turn carrying everything the Messages API has: a cached system prompt and tool,
    thinking, top_k, metadata, stop sequences, an image, a text document, the first answer's signed
    thinking block and tool_use, and a tool_result that answers it."""
    call = next(block for block in first_answer if block["type"] == "tool_use")
    return {
        "model": "claude",
        "max_tokens": 2000,
        "system": [
            {
                "type": "text",
                "text": "You are a careful meteorologist. " * 10 + salt,
                "cache_control": {"type": "ephemeral"},
            }
        ],
        "thinking": THINKING,
        "top_k": 7,
        "metadata": {"user_id": "user-42"},
        "stop_sequences": ["NEVER-SEEN"],
        "tools": [TOOL],
        "tool_choice": {"type": "auto"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is the weather where this picture was taken?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "Taken in Lyon."},
                        "title": "notes",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    },
                ],
            },
            {"role": "assistant", "content": first_answer},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "Sunny, 21C"}],
            },
        ],
    }


def sdk_arguments(body: dict) -> dict:
    """``messages.create`` arguments for a body (this SDK has no ``top_k`` argument: extra_body)."""
    arguments = dict(body)
    if "top_k" in arguments:
        arguments["extra_body"] = {"top_k": arguments.pop("top_k")}
    return arguments


def first_turn(stack, key) -> list[dict]:
    response = post(
        stack,
        key,
        {
            "model": "claude",
            "max_tokens": 2000,
            "thinking": THINKING,
            "tools": [TOOL],
            "tool_choice": {"type": "auto"},
            "messages": [{"role": "user", "content": "What is the weather in Lyon?"}],
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["content"]


def test_everything_the_client_sends_reaches_an_anthropic_target_unchanged(stack, key):
    body = rich_request(first_turn(stack, key))
    response = post(stack, key, body)
    assert response.status_code == 200, response.text
    sent = stack.mock.stats.last_request["body"]
    assert sent["model"] == "claude-mock" and sent["max_tokens"] == 2000
    for name in ("system", "thinking", "top_k", "metadata", "stop_sequences", "tools", "tool_choice", "messages"):
        assert sent[name] == body[name], name
    # The signed thinking block came back intact: the mock checks its signature.
    assert sent["messages"][1]["content"][0]["signature"] == thinking_signature(
        sent["messages"][1]["content"][0]["thinking"]
    )


def test_thinking_blocks_and_cache_usage_reach_the_client_and_settle_exactly(stack, key):
    first = first_turn(stack, key)
    assert first[0]["type"] == "thinking" and first[0]["signature"] == thinking_signature(first[0]["thinking"])
    fresh = stack.create_key(tenant=f"native-{uuid.uuid4().hex[:12]}", plan="metered")
    usages = []
    salt = uuid.uuid4().hex  # a prompt nothing has cached yet
    for _ in range(2):  # the first call writes the cache, the second reads it
        message = sdk(stack, fresh).messages.create(**sdk_arguments(rich_request(first, salt)))
        usages.append(message.usage.model_dump())
        stack.wait_settled(message._request_id)
        assert message.content[0].type == "thinking"
        assert message.content[0].signature == thinking_signature(message.content[0].thinking)
    assert usages[0]["cache_creation_input_tokens"] > 0 and usages[0]["cache_read_input_tokens"] == 0
    assert usages[1]["cache_read_input_tokens"] == usages[0]["cache_creation_input_tokens"]
    assert usages[1]["cache_creation_input_tokens"] == 0
    assert usages[1]["output_tokens"] >= THINKING_TOKENS
    assert used(stack, fresh) == (sum(billed_tokens(u) for u in usages), billed_micro_usd(usages))


def test_the_stream_is_anthropics_own_event_sequence_and_settles_exactly(stack, key):
    first = first_turn(stack, key)
    fresh = stack.create_key(tenant=f"native-{uuid.uuid4().hex[:12]}", plan="metered")
    response = post(stack, fresh, {**rich_request(first), "stream": True})
    assert response.status_code == 200, response.text
    events = sse_events(response.text)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    deltas = [e["delta"]["type"] for e in events if e["type"] == "content_block_delta"]
    assert deltas.count("thinking_delta") == THINKING_TOKENS and deltas.count("signature_delta") == 1
    assert "text_delta" in deltas
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts[0] == {"type": "thinking", "thinking": "", "signature": ""}
    thought = "".join(e["delta"].get("thinking", "") for e in events if e["type"] == "content_block_delta")
    signatures = [e["delta"]["signature"] for e in events if e.get("delta", {}).get("type") == "signature_delta"]
    signature = signatures[0]
    assert signature == thinking_signature(thought)
    start_usage = events[0]["message"]["usage"]
    assert start_usage["cache_creation_input_tokens"] + start_usage["cache_read_input_tokens"] > 0
    usage = {**start_usage, "output_tokens": events[-2]["usage"]["output_tokens"]}
    stack.wait_settled(response.headers["request-id"])
    assert used(stack, fresh) == (billed_tokens(usage), billed_micro_usd([usage]))


def test_sdk_stream_collects_thinking_and_tool_use(stack, key):
    with sdk(stack, key).messages.stream(
        model="claude",
        max_tokens=2000,
        thinking=THINKING,
        tools=[TOOL],
        messages=[{"role": "user", "content": "Weather in Lyon?"}],
    ) as stream:
        final = stream.get_final_message()
    kinds = [block.type for block in final.content]
    assert kinds[0] == "thinking" and kinds[-1] == "tool_use" and final.stop_reason == "tool_use"
    assert final.content[0].signature == thinking_signature(final.content[0].thinking)
    assert final.content[-1].id.startswith("toolu_mock") and isinstance(final.content[-1].input["city"], str)
    assert used(stack, key)[0] == billed_tokens(final.usage.model_dump())


@pytest.mark.parametrize("stream", [False, True])
def test_a_target_that_ignores_max_tokens_is_cut_with_max_tokens_and_settles_what_the_client_saw(stack, key, stream):
    body = {
        "model": "claude-runaway",
        "max_tokens": 6,
        "messages": [{"role": "user", "content": "Go on and on."}],
        "mock_reply_tokens": 60,
        "stream": stream,
    }
    response = post(stack, key, body)
    assert response.status_code == 200, response.text
    if stream:
        events = sse_events(response.text)
        assert [e["type"] for e in events][-2:] == ["message_delta", "message_stop"]
        assert events[-2]["delta"]["stop_reason"] == "max_tokens"
        text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
        usage = {**events[0]["message"]["usage"], "output_tokens": events[-2]["usage"]["output_tokens"]}
        assert [e["type"] for e in events].count("content_block_start") == [e["type"] for e in events].count(
            "content_block_stop"
        )
    else:
        message = response.json()
        assert message["stop_reason"] == "max_tokens"
        text, usage = message["content"][0]["text"], message["usage"]
    assert 0 < len(text.split()) <= 6 and usage["output_tokens"] <= 6
    stack.wait_settled(response.headers["request-id"])
    assert used(stack, key)[0] == billed_tokens(usage)


def test_the_reservation_bounds_what_an_anthropic_target_bills_for_images_tools_and_cache_writes(stack, key):
    body = rich_request(first_turn(stack, key), salt=uuid.uuid4().hex)  # nothing cached: writes
    fresh = stack.create_key(tenant=f"native-{uuid.uuid4().hex[:12]}", plan="metered")
    response = post(stack, fresh, {**body, "model": "claude-billed"})
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    item = stack.wait_settled(response.headers["request-id"])
    reserved_tokens = max(c["amount"] for c in item["charges"] if c["sk"].startswith("tokens_per_day#"))
    reserved_usd = max(c["amount"] for c in item["charges"] if c["sk"].startswith("usd_per_day#"))
    assert billed_tokens(usage) <= reserved_tokens
    assert billed_micro_usd([usage]) <= reserved_usd
    assert usage["cache_creation_input_tokens"] > 0


def test_a_pdf_document_cannot_be_bounded_and_is_an_anthropic_400_that_costs_nothing(stack, key):
    before = stack.mock.stats.snapshot()["chat_requests"]
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}}
    response = post(stack, key, {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": [pdf]}]})
    assert response.status_code == 400
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "invalid_request_error"
    assert stack.mock.stats.snapshot()["chat_requests"] == before and used(stack, key) == (0, 0)


def test_failover_from_an_anthropic_target_to_an_openai_one_translates_the_request(stack, key):
    message = sdk(stack, key).messages.create(
        model="claude-then-gpt",
        max_tokens=2000,
        thinking=THINKING,
        messages=[{"role": "user", "content": "Hello there."}],
        extra_body={"top_k": 5},
    )
    sent = stack.mock.stats.last_request["body"]
    assert sent["model"] == "mock-gpt" and sent["messages"][-1] == {"role": "user", "content": "Hello there."}
    assert "thinking" not in sent and "top_k" not in sent  # nothing an OpenAI-compatible API knows
    assert [block.type for block in message.content] == ["text"]
    stack.wait_settled(message._request_id)
    assert used(stack, key)[0] == message.usage.input_tokens + message.usage.output_tokens
