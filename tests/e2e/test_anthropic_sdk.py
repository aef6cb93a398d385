"""End to end: the real ``anthropic`` SDK, changed only in its base URL, against
``python -m quotagate_tools.local`` (what ``make dev`` runs, as a separate process) on Anthropic,
OpenAI-compatible and Bedrock targets of the mock model server, with the quota counters in the table
equal to the usage the SDK reported.

anthropic 2.x sends its API key as ``Authorization: Bearer <key>`` (older releases sent
``x-api-key``); the gateway accepts both credential headers."""

from __future__ import annotations

import json

import anthropic
import boto3
import openai
import pytest

from tests.e2e.local_gateway import running_local_gateway

pytestmark = pytest.mark.e2e
MODELS = ["mock-claude", "mock-gpt", "mock-bedrock"]  # Anthropic, OpenAI-compatible, Bedrock targets
TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gateway():
    with running_local_gateway() as running:
        yield running


def new_key(gateway) -> dict:
    from tests.e2e.test_local_gateway import cli

    return cli(
        "keys",
        "create",
        "--tenant",
        "e2e-anthropic",
        "--consumer",
        "sdk",
        "--plan",
        "pro",
        "--limits",
        json.dumps({"tokens_per_day": 10_000_000}),
        "--endpoint-url",
        gateway["base"],
    )


def tokens_used(gateway, key) -> int:
    """The key's daily token counter in the gateway's quota table (moto, read over HTTP)."""
    from tests.quota_table import QuotaTable

    client = boto3.client(
        "dynamodb",
        endpoint_url=gateway["moto"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return QuotaTable(client).usage_of(f"key#{key['key_id']}", "tokens_per_day")


def total(*messages) -> int:
    return sum(m.usage.input_tokens + m.usage.output_tokens for m in messages)


@pytest.mark.parametrize("model", MODELS)
def test_create_stream_and_count_tokens_settle_exactly(gateway, model):
    key = new_key(gateway)
    client = anthropic.Anthropic(base_url=gateway["base"], api_key=key["api_key"], max_retries=0)
    question = [{"role": "user", "content": "Name three rivers."}]

    counted = client.messages.count_tokens(model=model, system="Be brief.", messages=question)
    assert counted.input_tokens > 0
    assert tokens_used(gateway, key) == 0  # counting costs nothing

    created = client.messages.create(model=model, max_tokens=8, system="Be brief.", messages=question)
    assert created.content[0].type == "text" and created.content[0].text
    assert created.stop_reason == "max_tokens" and created.usage.output_tokens == 8
    assert counted.input_tokens >= created.usage.input_tokens  # the estimate bounds the prompt

    with client.messages.stream(model=model, max_tokens=8, system="Be brief.", messages=question) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == created.content[0].text == final.content[0].text
    assert final.usage.output_tokens == 8 and final.usage.input_tokens == created.usage.input_tokens

    assert tokens_used(gateway, key) == total(created, final)


@pytest.mark.parametrize("model", MODELS)
def test_streamed_tool_use_round_trip(gateway, model):
    key = new_key(gateway)
    client = anthropic.Anthropic(base_url=gateway["base"], api_key=key["api_key"], max_retries=0)
    question = {"role": "user", "content": "What is the weather in Paris?"}
    with client.messages.stream(model=model, max_tokens=200, tools=[TOOL], messages=[question]) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input["city"], str)

    turns = [
        question,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}]},
    ]
    with client.messages.stream(model=model, max_tokens=40, tools=[TOOL], messages=turns) as stream:
        second = stream.get_final_message()
    assert [block.type for block in second.content] == ["text"]
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert tokens_used(gateway, key) == total(first, second)


def test_the_sdk_sends_its_key_as_a_bearer_token():
    """This SDK version sends its key as a Bearer token (x-api-key is accepted too)."""
    client = anthropic.Anthropic(api_key="qg_example", base_url="http://127.0.0.1:9")
    assert client.auth_headers == {"Authorization": "Bearer qg_example"}


@pytest.mark.parametrize("key", ["qg_" + "0" * 40, "not-a-key"])  # refused (ACCESS_DENIED), malformed
def test_a_wrong_key_is_an_anthropic_authentication_error(gateway, key):
    # The edge answers this (API Gateway deployed, its emulator here), the same bytes on every path.
    client = anthropic.Anthropic(base_url=gateway["base"], api_key=key, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model="mock-gpt", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    error = caught.value
    assert error.type == "authentication_error"
    assert error.api_message and "API key" in error.api_message
    assert error.request_id  # from the request-id header


@pytest.mark.parametrize("key", ["qg_" + "0" * 40, "not-a-key"])
def test_the_same_wrong_key_is_still_the_openai_sdks_authentication_error(gateway, key):
    client = openai.OpenAI(base_url=f"{gateway['base']}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.code == "invalid_api_key"
    assert "API key" in caught.value.body["message"]
    assert caught.value.request_id


def billed(message) -> int:
    usage = message.usage
    return (
        usage.input_tokens
        + (usage.cache_creation_input_tokens or 0)
        + (usage.cache_read_input_tokens or 0)
        + usage.output_tokens
    )


def test_thinking_and_prompt_caching_pass_through_to_an_anthropic_target(gateway):
    """Native pass-through: the signed thinking blocks and the cache usage of the Anthropic target
    reach the SDK (created and streamed), a thinking block goes back unchanged in the next turn (the
    mock checks its signature), and the counters equal every token the target billed."""
    import uuid

    from quotagate_tools.mock.anthropic import thinking_signature

    key = new_key(gateway)
    client = anthropic.Anthropic(base_url=gateway["base"], api_key=key["api_key"], max_retries=0)
    system = [
        {
            "type": "text",
            "text": f"You forecast the weather. Case {uuid.uuid4().hex}. " * 20,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    thinking = {"type": "enabled", "budget_tokens": 1024}
    question = {"role": "user", "content": "Will it rain in Paris?"}
    created = client.messages.create(
        model="mock-claude", max_tokens=2000, system=system, thinking=thinking, messages=[question]
    )
    thought = created.content[0]
    assert thought.type == "thinking" and thought.signature == thinking_signature(thought.thinking)
    assert created.usage.cache_creation_input_tokens > 0 and created.usage.cache_read_input_tokens == 0

    turns = [
        question,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in created.content]},
        {"role": "user", "content": "And tomorrow?"},
    ]
    with client.messages.stream(
        model="mock-claude", max_tokens=2000, system=system, thinking=thinking, messages=turns
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds  # the SDK's thinking and signature events
    assert final.content[0].type == "thinking"
    assert final.content[0].signature == thinking_signature(final.content[0].thinking)
    assert final.usage.cache_read_input_tokens == created.usage.cache_creation_input_tokens
    assert tokens_used(gateway, key) == billed(created) + billed(final)
