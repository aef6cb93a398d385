"""The Messages protocol's translation, pure: a Messages request → the internal chat request, a chat
completion → a message, chat chunks → Anthropic SSE events, and the strict validation."""

from __future__ import annotations

import json

import pytest

from quotagate.errors import GatewayError
from quotagate.logic.metering import Usage
from quotagate.protocols.anthropic_messages import (
    MessageEvents,
    error_body,
    parse_count_tokens_request,
    parse_messages_request,
    to_message,
)

LIMIT = 1024 * 1024
TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def parse(**body):
    return parse_messages_request(json.dumps({"model": "m", "max_tokens": 50, **body}).encode(), LIMIT)


def events_of(raw: list[bytes]) -> list[dict]:
    out = []
    for chunk in raw:
        kind, data = chunk.decode().strip().split("\n")
        assert kind == f"event: {json.loads(data[6:])['type']}"
        out.append(json.loads(data[6:]))
    return out


def test_a_tool_round_trip_becomes_the_chat_request_openai_expects():
    request = parse(
        system=[
            {"type": "text", "text": "Be brief."},
            {"type": "text", "text": "Use tools.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Thanks."},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "timeout"},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA="}},
                        ],
                    },
                ],
            },
        ],
        tools=[TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.5,
        top_k=5,
        metadata={"user_id": "u-1"},
        stream=True,
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
    )
    chat = request.chat_body
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief.\n\nUse tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: timeout"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA="}},
                {"type": "text", "text": "Thanks."},
            ],
        },
    ]
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "", "parameters": TOOL["input_schema"]}}
    ]
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert chat["stop"] == ["END"] and chat["temperature"] == 0.5 and "top_k" not in chat
    assert chat["user"] == "u-1" and chat["max_tokens"] == 50
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": {"type": "object"}},
    }
    assert request.stop_sequences == ("END",)


def test_a_named_tool_choice_and_a_tool_choice_without_tools():
    named = parse(
        messages=[{"role": "user", "content": "x"}], tools=[TOOL], tool_choice={"type": "tool", "name": "get_weather"}
    )
    assert named.chat_body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert (
        "tool_choice" not in parse(messages=[{"role": "user", "content": "x"}], tool_choice={"type": "auto"}).chat_body
    )


@pytest.mark.parametrize(
    "body, where",
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]},
            "messages.0.content.0.type",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]},
            "messages.0.content.0.type",
        ),
        ({"messages": [{"role": "user", "content": "x", "name": []}], "system": 5}, "system"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages.0"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "forever"}}]}
                ]
            },
            "messages.0.content.0.cache_control.type",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "speed": "ludicrous"}, "speed"),
        ({"messages": [{"role": "user", "content": "x"}], "container": "c-1"}, "container"),
        (
            {"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled", "budget_tokens": 2048}},
            "thinking.budget_tokens",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [TOOL],
                "tool_choice": {"type": "tool", "name": "y"},
            },
            "tool_choice.name",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "tools": [{**TOOL, "type": "web_search_20250305"}]},
            "tools.0.type",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "stop_sequences": [" "]}, "stop_sequences"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AA"}}
                        ],
                    }
                ]
            },
            "messages.0.content.0.source.media_type",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ],
)
def test_invalid_requests_name_the_field(body, where):
    with pytest.raises(GatewayError) as caught:
        parse(**body)
    assert caught.value.status == 400 and caught.value.param == where
    assert error_body(caught.value) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": caught.value.message},
    }


def test_count_tokens_needs_no_max_tokens_and_drops_sampling_fields():
    request = parse_count_tokens_request(b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}', LIMIT)
    assert "max_tokens" not in request.chat_body
    request = parse_count_tokens_request(
        b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}', LIMIT
    )
    assert "max_tokens" not in request.body and request.dropped == ("max_tokens",)


def test_unknown_fields_at_any_depth_are_dropped_and_named():
    request = parse_messages_request(
        json.dumps(
            {
                "model": "m",
                "max_tokens": 5,
                "logprobs": True,
                "messages": [{"role": "user", "content": "x", "name": "bob"}],
                "tools": [{**TOOL, "eager_input_streaming": True, "future_flag": 1}],
            }
        ).encode(),
        LIMIT,
    )
    assert request.dropped == ("logprobs", "messages.0.name", "tools.0.future_flag")
    assert "logprobs" not in request.body and "name" not in request.body["messages"][0]
    assert request.dropped_headers == {"x-quotagate-dropped-params": "logprobs, messages.0.name, tools.0.future_flag"}


def test_a_completion_becomes_a_message_with_the_settled_usage():
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "not json"}},
    ]
    completion = {
        "id": "chatcmpl-1",
        "model": "alias",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": "Checking.", "tool_calls": calls},
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
    message = to_message(completion, Usage(30, 12, "provider"), (), "alias")
    assert message["id"].startswith("msg_") and message["model"] == "alias"
    assert message["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    assert message["usage"]["input_tokens"] == 30 and message["usage"]["output_tokens"] == 12


@pytest.mark.parametrize(
    "finish, matched, expected",
    [
        ("stop", None, ("end_turn", None)),
        ("length", None, ("max_tokens", None)),
        ("stop", "END", ("stop_sequence", "END")),
        ("stop", "OTHER", ("end_turn", None)),
        ("content_filter", None, ("refusal", None)),
    ],
)
def test_stop_reasons(finish, matched, expected):
    completion = {"choices": [{"finish_reason": finish, "stop_reason": matched, "message": {"content": "x"}}]}
    message = to_message(completion, None, ("END",), "m")
    assert (message["stop_reason"], message["stop_sequence"]) == expected


def chunk(delta=None, finish=None, **extra):
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, **extra}]}


def test_chunks_become_the_anthropic_event_sequence():
    stream = MessageEvents("alias", ("END",))
    raw = [stream.start()]
    for piece in (
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        chunk(finish="tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7}},
    ):
        raw += stream.feed(piece)
    raw += stream.finish(Usage(9, 7, "provider"))
    events = events_of(raw)
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["model"] == "alias" and events[0]["message"]["id"].startswith("msg_")
    assert events[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert events[3]["delta"] == {"type": "text_delta", "text": "lo"}
    assert events[5]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}
    assert [e["delta"]["partial_json"] for e in events[6:8]] == ['{"city":', '"Oslo"}']
    assert all(e["index"] == 1 for e in events[5:9])
    assert events[9]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[9]["usage"]["input_tokens"] == 9 and events[9]["usage"]["output_tokens"] == 7


def test_a_stop_sequence_named_by_the_target_is_reported_at_the_end_of_the_stream():
    stream = MessageEvents("alias", ("END",))
    stream.feed(chunk({"content": "x"}))
    stream.feed(chunk(finish="stop", stop_reason="END"))
    delta = events_of(stream.finish(None))[1]
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
