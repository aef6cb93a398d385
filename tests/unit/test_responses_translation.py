"""The Responses API translation: requests into chat requests (strictly validated, stateless), chat
answers and chat chunks back into Responses objects and typed events."""

from __future__ import annotations

import json

import pytest

from quotagate.errors import GatewayError
from quotagate.logic.metering import Usage
from quotagate.protocols.openai_responses import (
    ResponsesStreamTranslator,
    flat_name,
    parse_responses_request,
    response_object,
)

LIMIT = 1 << 20


def parse(**body):
    return parse_responses_request(json.dumps({"model": "m", **body}).encode(), LIMIT)


def rejected(**body) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse(**body)
    assert caught.value.status == 400
    return caught.value


def test_a_string_input_with_instructions_is_a_system_and_a_user_message():
    request = parse(input="Hello", instructions="Be brief.", max_output_tokens=20, temperature=0.3, top_p=0.9)
    assert request.chat_body == {
        "model": "m",
        "max_tokens": 20,
        "temperature": 0.3,
        "top_p": 0.9,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
    }
    assert request.stream is False


def test_items_with_a_function_call_round_trip_become_chat_tool_messages():
    request = parse(
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather in Oslo?"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
                ],
            },
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
            },
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": "weather",
                "arguments": '{"city":"Oslo"}',
                "status": "completed",
            },
            {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": '{"city":"Bergen"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "sun"}]},
        ],
        tools=[
            {
                "type": "function",
                "name": "weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": True,
            }
        ],
        tool_choice={"type": "function", "name": "weather"},
        parallel_tool_calls=False,
    )
    body = request.chat_body
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Oslo?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Bergen"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
        {"role": "tool", "tool_call_id": "call_2", "content": "sun"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather of a city",
                "strict": True,
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ({"format": {"type": "text"}}, None),
        ({"format": {"type": "json_object"}}, {"type": "json_object"}),
        (
            {
                "format": {
                    "type": "json_schema",
                    "name": "person",
                    "strict": True,
                    "schema": {"type": "object", "properties": {"name": {"type": "string"}}},
                }
            },
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "person",
                    "strict": True,
                    "schema": {"type": "object", "properties": {"name": {"type": "string"}}},
                },
            },
        ),
    ],
)
def test_text_format_becomes_response_format(text, expected):
    assert parse(input="x", text=text).chat_body.get("response_format") == expected


@pytest.mark.parametrize("name", ["previous_response_id", "conversation", "prompt"])
def test_server_side_state_is_a_400_naming_the_parameter(name):
    error = rejected(input="x", **{name: "resp_123" if name != "prompt" else {"id": "pmpt_1"}})
    assert error.param == name and error.code == "unsupported_parameter"
    assert "stores nothing" in error.message


def test_background_and_item_references_are_refused_and_store_is_accepted():
    assert rejected(input="x", background=True).param == "background"
    assert rejected(input=[{"type": "item_reference", "id": "msg_1"}]).param == "input[0]"
    assert (
        rejected(input=[{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]).param
        == "input[0].content[0].file_id"
    )
    assert parse(input="x", store=True, background=False).chat_body["messages"][-1]["content"] == "x"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
        ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
        ({"input": "x", "tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name"),
        ({"input": "x", "tool_choice": {"type": "function", "name": "f"}}, "tool_choice.name"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": 2.5}, "max_output_tokens"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "stream": "yes"}, "stream"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "p"}}}, "text.format.schema"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": "x", "metadata": {"k": 1}}, "metadata.k"),
        ({"input": "x", "max_tool_calls": 3}, "max_tool_calls"),
        ({"input": "x", "service_tier": "platinum"}, "service_tier"),
        (
            {"input": "x", "tools": [{"type": "namespace", "name": "n", "tools": [{"type": "custom"}]}]},
            "tools[0].tools[0].type",
        ),
    ],
)
def test_invalid_requests_are_400s_naming_the_parameter(body, param):
    assert rejected(**body).param == param


def test_streaming_asks_the_pipeline_for_usage():
    body = parse(input="x", stream=True).chat_body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def completion(message, finish="stop", usage=(7, 3)):
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "mock-gpt",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }


def test_a_completion_becomes_a_response_with_message_and_function_call_items():
    request = parse(input="x", tools=[{"type": "function", "name": "f"}], metadata={"a": "b"})
    answer = response_object(
        request,
        completion(
            {
                "role": "assistant",
                "content": "Calling.",
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            finish="tool_calls",
        ),
    )
    assert answer["object"] == "response" and answer["status"] == "completed" and answer["store"] is False
    assert answer["id"].startswith("resp_") and answer["model"] == "mock-gpt" and answer["metadata"] == {"a": "b"}
    message, call = answer["output"]
    assert message["type"] == "message" and message["content"][0] == {
        "type": "output_text",
        "text": "Calling.",
        "annotations": [],
        "logprobs": [],
    }
    assert call["type"] == "function_call" and call["call_id"] == "call_9" and call["name"] == "f"
    assert answer["usage"]["input_tokens"] == 7 and answer["usage"]["output_tokens"] == 3
    assert answer["usage"]["total_tokens"] == 10


def test_a_truncated_completion_is_incomplete_and_settled_usage_wins():
    answer = response_object(
        parse(input="x"), completion({"role": "assistant", "content": "abc"}, "length"), settled=Usage(8, 4, "counted")
    )
    assert answer["status"] == "incomplete" and answer["incomplete_details"] == {"reason": "max_output_tokens"}
    assert answer["usage"]["total_tokens"] == 12


def chunk(delta=None, finish=None, usage=None):
    data = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "mock-gpt",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if usage is None else [],
    }
    if usage is not None:
        data["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return data


def test_a_stream_of_text_and_a_tool_call_becomes_typed_events_in_sequence():
    translator = ResponsesStreamTranslator(parse(input="x", stream=True))
    events = translator.start()
    for data in (
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk(finish="tool_calls"),
        chunk(usage=(5, 6)),
    ):
        events += translator.feed(data)
    events += translator.complete()
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert events[6]["text"] == "Hello"
    assert events[12]["arguments"] == '{"a":1}' and events[12]["name"] == "f"
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["call_id"] == "call_1" and final["output"][1]["arguments"] == '{"a":1}'
    assert final["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 6,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 11,
    }


def test_a_broken_stream_ends_with_error_and_response_failed():
    translator = ResponsesStreamTranslator(parse(input="x", stream=True))
    events = translator.start() + translator.feed(chunk({"content": "Hi"}))
    events += translator.fail({"message": "dropped", "type": "api_error", "code": "upstream_stream_interrupted"})
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "upstream_stream_interrupted"
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"] == {"code": "upstream_stream_interrupted", "message": "dropped"}


CODEX_TOOLS = [
    {"type": "function", "name": "shell", "parameters": {"type": "object"}, "strict": False},
    {
        "type": "namespace",
        "name": "mcp__files",
        "description": "File tools.",
        "tools": [
            {"type": "function", "name": "read", "description": "Read a file.", "parameters": {"type": "object"}}
        ],
    },
    {"type": "web_search", "external_web_access": False},
]


def codex_default(**extra):
    """Codex 0.17x's default request (abridged): the fields it always sends."""
    return parse(
        input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "say hi"}]}],
        instructions="You are Codex.",
        tools=CODEX_TOOLS,
        tool_choice="auto",
        parallel_tool_calls=False,
        store=False,
        stream=True,
        include=["reasoning.encrypted_content"],
        prompt_cache_key="019a-session",
        client_metadata={"x-codex-turn": "1"},
        **extra,
    )


def test_codexs_default_request_is_translated_web_search_dropped_and_named():
    request = codex_default(brand_new_flag=True)
    names = [tool["function"]["name"] for tool in request.chat_body["tools"]]
    assert names == ["shell", "mcp__files__read"]
    assert request.chat_body["tools"][1]["function"]["description"] == "Read a file."
    for absent in ("client_metadata", "include", "prompt_cache_key", "store", "brand_new_flag"):
        assert absent not in request.chat_body
    assert request.dropped == ("brand_new_flag", "store", "include", "prompt_cache_key", "client_metadata", "tools[2]")


def test_a_namespace_tools_call_comes_back_named_as_the_client_declared_it():
    request = codex_default()
    completion = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "mcp__files__read", "arguments": "{}"}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    item = response_object(request, completion)["output"][0]
    assert (item["type"], item["namespace"], item["name"]) == ("function_call", "mcp__files", "read")
    # Sent back in the next turn, the call is named as the flattened tool again.
    again = parse(
        input=[
            {"role": "user", "content": "say hi"},
            {"type": "function_call", "call_id": "c1", "namespace": "mcp__files", "name": "read", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "hello"},
        ],
        tools=CODEX_TOOLS,
    )
    assert again.chat_body["messages"][1]["tool_calls"][0]["function"]["name"] == "mcp__files__read"


def test_a_flattened_name_longer_than_chat_allows_is_cut_with_a_digest():
    name = flat_name("mcp__" + "n" * 60, "read")
    assert len(name) == 64 and name != flat_name("mcp__" + "n" * 61, "read")
