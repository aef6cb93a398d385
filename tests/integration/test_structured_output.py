"""Structured output and parameters behave the same whichever provider serves: ``response_format``
(native on OpenAI-compatible targets, a forced tool call on Anthropic and Bedrock), tool calls from
every mock dialect, and one rule for out-of-range sampling parameters."""

from __future__ import annotations

import json

import httpx
import openai
import pydantic
import pytest

from tests.integration.gateway_stack import gateway_stack, mock_providers

PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}
CONFIG = {
    "providers": mock_providers(),
    "models": {
        "via-openai": {"provider": "openai", "upstream_model": "mock-gpt", "price": PRICE},
        "via-anthropic": {"provider": "anthropic", "upstream_model": "claude-mock", "price": PRICE},
        "via-bedrock": {"provider": "bedrock", "upstream_model": "amazon.nova-mock-v1:0", "price": PRICE},
        # An alias that fails over from Bedrock to Anthropic: the same request must fare the same on both.
        "bedrock-then-claude": {
            "targets": [
                {"provider": "bedrock", "upstream_model": "amazon.nova-mock-v1:0@status=503", "price": PRICE},
                {"provider": "anthropic", "upstream_model": "claude-mock", "price": PRICE},
            ]
        },
    },
    "plans": {"metered": {"limits": {"tokens_per_minute": 1000000}, "models": "*", "default_max_tokens": 200}},
    "default_plan": "metered",
}
MODELS = ["via-openai", "via-anthropic", "via-bedrock"]
MESSAGES = [{"role": "user", "content": "Who wrote the first program?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class Person(pydantic.BaseModel):
    name: str
    age: int
    languages: list[str]


class Loose(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("structured"), CONFIG, token_delay=0.001) as running:
        yield running


@pytest.fixture(scope="module")
def key(stack):
    return stack.create_key(tenant="structured", plan="metered")


@pytest.fixture(scope="module")
def client(stack, key):
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key["api_key"], max_retries=0)


@pytest.mark.parametrize("model", [*MODELS, "bedrock-then-claude"])
def test_json_schema_parses_into_the_model_on_every_provider(client, model):
    completion = client.chat.completions.parse(model=model, messages=MESSAGES, response_format=Person)
    message = completion.choices[0].message
    assert isinstance(message.parsed, Person)
    assert completion.choices[0].finish_reason == "stop" and not message.tool_calls


@pytest.mark.parametrize("model", MODELS)
def test_streamed_json_schema_is_content_chunks_that_parse(client, model):
    schema = {"type": "json_schema", "json_schema": {"name": "Person", "schema": Person.model_json_schema()}}
    pieces, finish, tool_chunks = [], None, 0
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, response_format=schema, stream=True):
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            tool_chunks += bool(choice.delta.tool_calls)
            finish = choice.finish_reason or finish
    assert Person.model_validate_json("".join(pieces)) and finish == "stop" and tool_chunks == 0


@pytest.mark.parametrize("model", MODELS)
def test_json_object_mode_answers_a_json_object_on_every_provider(client, model):
    completion = client.chat.completions.create(model=model, messages=MESSAGES, response_format={"type": "json_object"})
    assert isinstance(json.loads(completion.choices[0].message.content), dict)
    assert Loose.model_validate_json(completion.choices[0].message.content)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_json_object_mode_follows_the_schema_the_prompt_describes(client, model, stream):
    # What instructor's JSON mode sends: json_object, and the schema written into the system message.
    messages = [
        {
            "role": "system",
            "content": f"Answer with JSON matching this json_schema:\n{json.dumps(Person.model_json_schema())}",
        },
        *MESSAGES,
    ]
    kwargs = {"model": model, "messages": messages, "response_format": {"type": "json_object"}}
    if stream:
        text = "".join(
            choice.delta.content or ""
            for chunk in client.chat.completions.create(**kwargs, stream=True)
            for choice in chunk.choices
        )
    else:
        text = client.chat.completions.create(**kwargs).choices[0].message.content
    person = Person.model_validate_json(text)
    assert person.name and person.languages


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_tool_call_comes_back_from_every_provider(client, model, stream):
    kwargs = {"model": model, "messages": MESSAGES, "tools": [WEATHER], "tool_choice": "required"}
    if stream:
        name, arguments, finish = "", "", None
        for chunk in client.chat.completions.create(**kwargs, stream=True):
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or []:
                    name += call.function.name or ""
                    arguments += call.function.arguments or ""
                finish = choice.finish_reason or finish
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        name, arguments, finish = (
            choice.message.tool_calls[0].function.name,
            choice.message.tool_calls[0].function.arguments,
            choice.finish_reason,
        )
    assert name == "get_weather" and "city" in json.loads(arguments) and finish == "tool_calls"


def test_the_openai_mock_answers_in_text_after_a_tool_result(client):
    first = client.chat.completions.create(model="via-openai", messages=MESSAGES, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    second = client.chat.completions.create(
        model="via-openai",
        tools=[WEATHER],
        messages=[
            *MESSAGES,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Rain."},
        ],
    )
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls


@pytest.mark.parametrize("model", [*MODELS, "bedrock-then-claude"])
def test_temperature_above_one_is_served_by_every_provider(client, model):
    completion = client.chat.completions.create(model=model, messages=MESSAGES, temperature=1.7, max_tokens=5)
    assert completion.choices[0].message.content


@pytest.mark.parametrize("model", [*MODELS, "bedrock-then-claude"])
@pytest.mark.parametrize(("name", "value"), [("temperature", 2.5), ("top_p", 1.2), ("presence_penalty", -2.5)])
def test_out_of_range_values_are_the_same_400_everywhere_and_reach_no_model(stack, key, model, name, value):
    before = stack.mock.stats.snapshot()["chat_requests"]
    response = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        timeout=30,
        headers={"authorization": f"Bearer {key['api_key']}"},
        json={"model": model, "messages": MESSAGES, name: value},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_value" and response.json()["error"]["param"] == name
    assert stack.mock.stats.snapshot()["chat_requests"] == before


@pytest.mark.parametrize("model", MODELS)
def test_structured_output_is_metered_and_settled_exactly(stack, model):
    fresh = stack.create_key(tenant="structured-settle", plan="metered")
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=fresh["api_key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.parse(model=model, messages=MESSAGES, response_format=Person)
    completion = raw.parse()
    stack.wait_settled(raw.headers["x-request-id"])
    assert stack.quota_used(f"key#{fresh['key_id']}", "tokens_per_minute") == completion.usage.total_tokens


def test_the_responses_api_text_format_works_on_a_forced_tool_provider(client):
    schema = Person.model_json_schema()
    response = client.responses.create(
        model="via-bedrock",
        input="Who wrote the first program?",
        text={"format": {"type": "json_schema", "name": "Person", "schema": schema}},
    )
    assert Person.model_validate_json(response.output_text)
    parsed = client.responses.parse(model="via-anthropic", input="Who wrote the first program?", text_format=Person)
    assert isinstance(parsed.output_parsed, Person)


def test_what_a_provider_cannot_express_is_the_same_error_on_anthropic_and_bedrock(stack, key):
    errors = {}
    for model in ("via-anthropic", "via-bedrock"):
        response = httpx.post(
            f"{stack.base_url}/v1/chat/completions",
            timeout=30,
            headers={"authorization": f"Bearer {key['api_key']}"},
            json={"model": model, "messages": MESSAGES, "n": 2},
        )
        errors[model] = (response.status_code, response.json()["error"]["code"])
    assert errors["via-anthropic"] == errors["via-bedrock"] == (400, "unsupported_for_provider")
