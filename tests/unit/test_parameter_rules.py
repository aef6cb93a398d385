"""One rule for parameters and structured output whatever the target: OpenAI ranges checked at the
gateway, deterministic mapping into each provider's range, and ``response_format`` emulated with a
forced tool call where the provider has no native structured output."""

from __future__ import annotations

import json

import pytest

from quotagate.errors import GatewayError
from quotagate.logic.chat_request import parse_chat_request
from quotagate.providers import anthropic, bedrock

MESSAGES = [{"role": "user", "content": "Who is it?"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "Person", "schema": PERSON, "strict": True}}


def chat(**fields):
    return parse_chat_request(json.dumps({"model": "m", "messages": MESSAGES, **fields}).encode())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("top_p", 1.5),
        ("top_p", -1),
        ("presence_penalty", 2.1),
        ("frequency_penalty", -3),
    ],
)
def test_out_of_range_values_are_the_same_400_for_every_target(name, value):
    with pytest.raises(GatewayError) as caught:
        chat(**{name: value})
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "invalid_value", name)


@pytest.mark.parametrize("fields", [{"temperature": 2}, {"temperature": 0}, {"top_p": 1}, {"presence_penalty": -2}])
def test_values_at_the_ends_of_the_ranges_are_accepted(fields):
    assert chat(**fields).body[next(iter(fields))] == next(iter(fields.values()))


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "xml"}, "response_format.type"),
        ("json", "response_format"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "a b"}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "P", "schema": []}}, "response_format.json_schema.schema"),
    ],
)
def test_malformed_response_formats_are_400s(response_format, param):
    with pytest.raises(GatewayError) as caught:
        chat(response_format=response_format)
    assert caught.value.status == 400 and caught.value.param == param


@pytest.mark.parametrize("temperature", [0.0, 0.4, 1.0, 1.7, 2.0])
def test_anthropic_and_bedrock_map_temperature_alike(temperature):
    body = {"model": "m", "messages": MESSAGES, "temperature": temperature}
    expected = min(temperature, 1.0)
    assert anthropic.to_messages_request(body)["temperature"] == expected
    assert bedrock.to_converse_request(body)["inferenceConfig"]["temperature"] == expected


def test_anthropic_forces_a_tool_for_json_schema():
    request = anthropic.to_messages_request({"model": "m", "messages": MESSAGES, "response_format": SCHEMA_FORMAT})
    assert request["tools"] == [
        {"name": "Person", "description": "Give the answer in this structure.", "input_schema": PERSON}
    ]
    assert request["tool_choice"] == {"type": "tool", "name": "Person"}


def test_anthropic_json_object_forces_an_object_tool_and_keeps_the_clients_tools_callable():
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    request = anthropic.to_messages_request(
        {"model": "m", "messages": MESSAGES, "tools": tools, "response_format": {"type": "json_object"}}
    )
    assert [t["name"] for t in request["tools"]] == ["lookup", "json_object"]
    assert request["tools"][1]["input_schema"] == {"type": "object"}
    assert request["tool_choice"] == {"type": "any"}  # a real tool call, or the structured answer


def test_anthropic_answer_through_the_response_tool_is_the_message_content():
    message = {
        "id": "msg_1",
        "type": "message",
        "model": "claude",
        "stop_reason": "tool_use",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "Person", "input": {"name": "Ada", "age": 36}}],
        "usage": {"input_tokens": 10, "output_tokens": 9},
    }
    completion = anthropic.to_chat_completion(message, response_tool="Person")
    reply = completion["choices"][0]
    assert json.loads(reply["message"]["content"]) == {"name": "Ada", "age": 36}
    assert "tool_calls" not in reply["message"] and reply["finish_reason"] == "stop"


def test_anthropic_streamed_response_tool_arrives_as_content_chunks():
    translator = anthropic.StreamTranslator("claude", include_usage=False, response_tool="Person")
    events = [
        {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 5, "output_tokens": 1}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "t", "name": "Person", "input": {}},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"name":'}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ' "Ada"}'}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 6}},
        {"type": "message_stop"},
    ]
    chunks = [c for e in events for c in translator.feed(e)]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert not any("tool_calls" in d for d in deltas)
    assert json.loads("".join(d.get("content") or "" for d in deltas)) == {"name": "Ada"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_bedrock_forces_a_tool_for_json_schema():
    request = bedrock.to_converse_request({"model": "m", "messages": MESSAGES, "response_format": SCHEMA_FORMAT})
    assert request["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "Person",
                    "description": "Give the answer in this structure.",
                    "inputSchema": {"json": PERSON},
                }
            }
        ],
        "toolChoice": {"tool": {"name": "Person"}},
    }


def test_bedrock_answer_through_the_response_tool_is_the_message_content():
    response = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t", "name": "Person", "input": {"name": "Ada", "age": 36}}}],
            }
        },
        "stopReason": "tool_use",
        "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
    }
    reply = bedrock.to_chat_completion(response, "m", response_tool="Person")["choices"][0]
    assert json.loads(reply["message"]["content"]) == {"name": "Ada", "age": 36}
    assert "tool_calls" not in reply["message"] and reply["finish_reason"] == "stop"


def test_bedrock_streamed_response_tool_arrives_as_content_chunks():
    translator = bedrock.StreamTranslator("m", include_usage=False, response_tool="Person")
    events = [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockStart": {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t", "name": "Person"}}}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '{"name": '}}}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '"Ada"}'}}}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"messageStop": {"stopReason": "tool_use"}},
    ]
    chunks = [c for e in events for c in translator.feed(e)]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert not any("tool_calls" in d for d in deltas)
    assert json.loads("".join(d.get("content") or "" for d in deltas)) == {"name": "Ada"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_response_format_is_estimated_like_a_tool_where_it_becomes_one():
    # Anthropic and Bedrock add their tool system prompt for the forced tool: the reservation counts it.
    from quotagate.logic import estimate

    assert estimate.measure({"messages": MESSAGES, "response_format": SCHEMA_FORMAT}).has_tools
    assert estimate.measure({"messages": MESSAGES, "response_format": {"type": "json_object"}}).has_tools
    assert not estimate.measure({"messages": MESSAGES, "response_format": {"type": "text"}}).has_tools
