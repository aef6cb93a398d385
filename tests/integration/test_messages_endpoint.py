"""``POST /v1/messages`` and ``/v1/messages/count_tokens`` through the real proxy (API Gateway
emulator, authorizer, moto) with the real ``anthropic`` SDK as the client, against Anthropic,
OpenAI-compatible and Bedrock targets of the mock model server: the same pipeline as chat, so the
quota counters in the table equal the usage the client was told, and bad input costs nothing."""

from __future__ import annotations

import json
import math
import uuid

import anthropic
import httpx
import pytest

from tests.integration.gateway_stack import gateway_stack, mock_providers

PRICES = {"openai": (1.0, 2.0), "anthropic": (3.0, 15.0), "bedrock": (0.5, 1.5)}


def price(provider):
    return {"input_per_million": PRICES[provider][0], "output_per_million": PRICES[provider][1]}


CONFIG = {
    "providers": mock_providers(read_timeout=30),
    "models": {
        "via-openai": {"provider": "openai", "upstream_model": "mock-gpt", "price": price("openai")},
        "via-anthropic": {"provider": "anthropic", "upstream_model": "claude-mock", "price": price("anthropic")},
        "via-bedrock": {"provider": "bedrock", "upstream_model": "amazon.nova-mock-v1:0", "price": price("bedrock")},
        "drop-anthropic": {
            "provider": "anthropic",
            "upstream_model": "claude-mock@drop_after=3",
            "price": price("anthropic"),
        },
        "down": {"provider": "openai", "upstream_model": "mock-gpt@status=500", "price": price("openai")},
        "hidden": {"provider": "openai", "upstream_model": "mock-gpt", "price": price("openai")},
    },
    "plans": {
        "metered": {
            "limits": {"tokens_per_day": 10000000, "usd_per_day": 100},
            "models": ["via-openai", "via-anthropic", "via-bedrock", "drop-anthropic", "down"],
            "default_max_tokens": 32,
        },
        "tiny": {"limits": {"tokens_per_day": 40}, "models": "*", "default_max_tokens": 32},
    },
    "default_plan": "metered",
}
MODELS = ["via-anthropic", "via-openai", "via-bedrock"]
TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("messages"), CONFIG, token_delay=0.002) as running:
        yield running


@pytest.fixture
def key(stack):
    return stack.create_key(tenant=f"msg-{uuid.uuid4().hex[:12]}", plan="metered")


def client(stack, key):
    # This stack's identity source is Authorization: the SDK sends the key as a Bearer token.
    return anthropic.Anthropic(base_url=stack.base_url, auth_token=key["api_key"], api_key=None, max_retries=0)


def used(stack, key):
    return (
        stack.quota_used(f"key#{key['key_id']}", "tokens_per_day"),
        stack.quota_used(f"key#{key['key_id']}", "usd_per_day"),
    )


def micro_usd(provider, usage_pairs):
    input_price, output_price = PRICES[provider]
    return sum(math.ceil(round(i * input_price + o * output_price, 6)) for i, o in usage_pairs)


def post(stack, key, body, path="/v1/messages", **headers):
    return httpx.post(
        f"{stack.base_url}{path}",
        json=body,
        timeout=30,
        headers={"authorization": f"Bearer {key['api_key']}", **headers},
    )


@pytest.mark.parametrize("model", MODELS)
def test_create_returns_a_message_and_settles_exactly_what_it_reports(stack, key, model):
    message = client(stack, key).messages.create(
        model=model, max_tokens=20, system="Be brief.", messages=[{"role": "user", "content": "Name three rivers."}]
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 20 and message.usage.input_tokens > 0
    stack.wait_settled(message._request_id)
    tokens, usd = used(stack, key)
    assert tokens == message.usage.input_tokens + message.usage.output_tokens
    provider = model.removeprefix("via-")
    assert usd == micro_usd(provider, [(message.usage.input_tokens, message.usage.output_tokens)])


@pytest.mark.parametrize("model", MODELS)
def test_stream_text_events_and_exact_settlement(stack, key, model):
    with client(stack, key).messages.stream(
        model=model,
        max_tokens=12,
        messages=[{"role": "user", "content": "Stream a little."}],
        extra_body={"mock_reply_tokens": 30},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 12
    tokens, _ = used(stack, key)
    assert tokens == final.usage.input_tokens + final.usage.output_tokens


@pytest.mark.parametrize("model", MODELS)
def test_tool_use_round_trip_streamed(stack, key, model):
    sdk = client(stack, key)
    question = {"role": "user", "content": "What is the weather in Paris?"}
    with sdk.messages.stream(model=model, max_tokens=200, tools=[TOOL], messages=[question]) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input.get("city"), str)
    answer = {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21C"}
    follow_up = [
        question,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [answer]},
    ]
    with sdk.messages.stream(model=model, max_tokens=50, tools=[TOOL], messages=follow_up) as stream:
        second = stream.get_final_message()
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in second.content] == ["text"]
    tokens, _ = used(stack, key)
    assert tokens == sum(m.usage.input_tokens + m.usage.output_tokens for m in (first, second))


@pytest.mark.parametrize("model", MODELS)
def test_forced_tool_choice_non_stream(stack, key, model):
    message = client(stack, key).messages.create(
        model=model,
        max_tokens=100,
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather?"}],
    )
    # (the Bedrock mock writes a short text preface before the call)
    assert message.content[-1].type == "tool_use" and message.stop_reason == "tool_use"
    assert message.content[-1].name == "get_weather" and isinstance(message.content[-1].input["city"], str)


def test_stop_sequence_is_reported_for_an_anthropic_target(stack, key):
    sdk = client(stack, key)
    plain = sdk.messages.create(
        model="via-anthropic", max_tokens=30, messages=[{"role": "user", "content": "Tell me more."}]
    )
    word = plain.content[0].text.split()[2]
    stopped = sdk.messages.create(
        model="via-anthropic",
        max_tokens=30,
        stop_sequences=[word],
        messages=[{"role": "user", "content": "Tell me more."}],
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert word not in stopped.content[0].text


def test_count_tokens_costs_nothing(stack, key):
    sdk = client(stack, key)
    before = stack.mock.stats.snapshot()["chat_requests"]
    counted = sdk.messages.count_tokens(
        model="via-anthropic", system="Be brief.", messages=[{"role": "user", "content": "Name three rivers."}]
    )
    assert counted.input_tokens > 0
    assert stack.mock.stats.snapshot()["chat_requests"] == before
    assert used(stack, key) == (0, 0)
    # The estimate is what a request reserves for the prompt: never below what the model reports.
    message = sdk.messages.create(
        model="via-anthropic",
        max_tokens=5,
        system="Be brief.",
        messages=[{"role": "user", "content": "Name three rivers."}],
    )
    assert counted.input_tokens >= message.usage.input_tokens


@pytest.mark.parametrize(
    "body, where",
    [
        ({"model": "via-openai", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        (
            {"model": "via-openai", "max_tokens": 5, "messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role",
        ),
        (
            {"model": "via-openai", "max_tokens": 5, "messages": [{"role": "system", "content": "hi"}]},
            "messages",
        ),
        (
            {"model": "via-openai", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages.0.content.0.type",
        ),
        (
            {
                "model": "via-openai",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "temperature": 1.5,
            },
            "temperature",
        ),
        (
            {
                "model": "via-openai",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "speed": "ludicrous",
            },
            "speed",
        ),
        (
            {
                "model": "via-openai",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "x"}],
            },
            "tools.0.input_schema",
        ),
    ],
)
def test_invalid_requests_are_anthropic_400s_and_cost_nothing(stack, key, body, where):
    before = stack.mock.stats.snapshot()["chat_requests"]
    response = post(stack, key, body)
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["message"].startswith(where)
    assert stack.mock.stats.snapshot()["chat_requests"] == before
    assert stack.quota_used(f"key#{key['key_id']}", "requests_per_minute") == 0
    assert used(stack, key) == (0, 0)


def test_sdk_raises_its_own_error_classes(stack, key):
    sdk = client(stack, key)
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.messages.create(
            model="via-openai",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"temperature": 2},
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.InternalServerError) as down:
        sdk.messages.create(model="down", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert down.value.status_code == 502 and down.value.body["error"]["type"] == "api_error"
    tiny = stack.create_key(tenant=f"msg-{uuid.uuid4().hex[:12]}", plan="tiny")
    spend = {
        "model": "via-openai",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}],
        "extra_body": {"mock_reply_tokens": 20},
    }
    client(stack, tiny).messages.create(**spend)  # uses 28 of the 40 tokens a day
    with pytest.raises(anthropic.RateLimitError) as limited:
        client(stack, tiny).messages.create(**spend)
    assert limited.value.body["error"]["type"] == "rate_limit_error"


def test_errors_before_the_endpoint_are_anthropic_shaped(stack, key):
    too_big = post(
        stack,
        key,
        {"model": "via-openai", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]},
    )
    assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "request_too_large"
    bad_json = httpx.post(
        f"{stack.base_url}/v1/messages",
        content=b"{not json",
        timeout=10,
        headers={"authorization": f"Bearer {key['api_key']}"},
    )
    assert bad_json.status_code == 400 and bad_json.json()["type"] == "error"
    unknown = httpx.get(
        f"{stack.base_url}/v1/messages/batches", timeout=10, headers={"authorization": f"Bearer {key['api_key']}"}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    wrong_key = anthropic.Anthropic(base_url=stack.base_url, auth_token="qg_" + "x" * 40, api_key=None, max_retries=0)
    with pytest.raises((anthropic.AuthenticationError, anthropic.PermissionDeniedError)) as denied:
        wrong_key.messages.create(model="via-openai", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert denied.value.body["type"] == "error" and denied.value.body["error"]["type"] in (
        "authentication_error",
        "permission_error",
    )
    # The chat endpoint keeps OpenAI's shape.
    chat = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": "via-openai"},
        timeout=10,
        headers={"authorization": f"Bearer {key['api_key']}"},
    )
    assert chat.status_code == 400 and set(chat.json()) == {"error"} and "code" in chat.json()["error"]


def test_a_stream_cut_mid_way_ends_with_an_error_event_and_settles_what_was_sent(stack, key):
    response = post(
        stack,
        key,
        {
            "model": "drop-anthropic",
            "max_tokens": 30,
            "stream": True,
            "messages": [{"role": "user", "content": "Go on."}],
        },
    )
    assert response.status_code == 200
    events = [line.split(": ", 1)[1] for line in response.text.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "error"
    assert "message_stop" not in events
    last = json.loads(response.text.strip().splitlines()[-1][len("data: ") :])
    assert last["type"] == "error" and last["error"]["type"] == "api_error"
    stack.wait_settled(response.headers["x-request-id"])
    assert used(stack, key)[0] > 0


def test_anthropic_version_header_is_accepted_and_request_id_is_set(stack, key):
    response = post(
        stack,
        key,
        {"model": "via-bedrock", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        **{"anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 200
    assert response.headers["request-id"] == response.headers["x-request-id"]
    assert response.json()["id"].startswith("msg_")


def test_keep_alives_are_ping_events_while_the_upstream_is_silent(tmp_path):
    with gateway_stack(tmp_path, CONFIG, token_delay=0.002, keepalive_seconds=0.05) as slow_stack:
        key = slow_stack.create_key(tenant=f"msg-{uuid.uuid4().hex[:12]}", plan="metered")
        response = post(
            slow_stack,
            key,
            {
                "model": "via-openai",
                "max_tokens": 3,
                "stream": True,
                "messages": [{"role": "user", "content": "Slowly."}],
                "mock_token_delay": 0.3,
            },
        )
    events = [line.split(": ", 1)[1] for line in response.text.splitlines() if line.startswith("event: ")]
    assert "ping" in events and events[0] == "message_start" and events[-1] == "message_stop"
    assert ": ping" not in response.text.splitlines()  # no SSE comments: Messages has ping events
