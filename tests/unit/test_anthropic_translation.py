"""OpenAI <-> Anthropic Messages translation (pure functions, no network)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quotagate.providers.anthropic import (
    StreamTranslator,
    finish_reason,
    to_chat_completion,
    to_messages_request,
    usage_from,
)
from quotagate.providers.exceptions import AnthropicStreamError, TranslationError

# --------------------------------------------------------------------------------------------
# OpenAI request -> Messages request
# --------------------------------------------------------------------------------------------


def translate(*messages: Any, **fields: Any) -> dict[str, Any]:
    """The Messages request for a chat request of ``messages`` to model "m" with max_tokens 5."""
    return to_messages_request({"model": "m", "max_tokens": 5, "messages": list(messages), **fields})


def test_minimal_request():
    request = to_messages_request(
        {"model": "claude-x", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert request == {"model": "claude-x", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}


def test_system_and_developer_messages_become_top_level_system():
    request = translate(
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use English."}]},
        {"role": "user", "content": "Hi"},
    )
    assert request["system"] == "Be brief.\n\nUse English."
    assert request["messages"] == [{"role": "user", "content": "Hi"}]


def test_consecutive_same_role_messages_are_merged():
    request = translate(
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "three"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "five"},
    )
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}],
        },
        {"role": "user", "content": "five"},
    ]


def test_empty_messages_are_dropped():
    request = translate(
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Again"},
    )
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Again"}]}
    ]


def test_image_parts():
    request = translate(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
            ],
        }
    )
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_pdf_file_part_becomes_document():
    request = translate(
        {
            "role": "user",
            "content": [
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
            ],
        }
    )
    assert request["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        }
    ]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}},
        {"type": "file", "file": {"file_id": "file-123"}},
    ],
)
def test_unsupported_parts_are_refused(part):
    with pytest.raises(TranslationError):
        translate({"role": "user", "content": [part]})


def test_parameters():
    request = to_messages_request(
        {
            "model": "m",
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "stop": "END",
            "temperature": 1.7,
            "top_p": 0.9,
            "user": "user-42",
            "stream": True,
            "stream_options": {"include_usage": True},
            "presence_penalty": 0.5,
            "seed": 1,
            "messages": [{"role": "user", "content": "Hi"}],
        }
    )
    assert request["max_tokens"] == 20  # max_completion_tokens wins
    assert request["stop_sequences"] == ["END"]
    assert request["temperature"] == 1.0  # Anthropic's range is 0..1
    assert request["top_p"] == 0.9
    assert request["metadata"] == {"user_id": "user-42"}
    assert request["stream"] is True
    for dropped in ("stream_options", "presence_penalty", "seed", "stop", "user", "max_completion_tokens"):
        assert dropped not in request


def test_stop_list_drops_blank_sequences_and_default_max_tokens():
    request = to_messages_request(
        {"model": "m", "stop": ["a", " ", ""], "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert request["stop_sequences"] == ["a"]
    assert request["max_tokens"] > 0


def test_n_above_one_is_refused():
    with pytest.raises(TranslationError):
        translate({"role": "user", "content": "x"}, n=2)


def test_mock_fields_pass_through():
    request = translate({"role": "user", "content": "x"}, mock_fault="status=500", mock_reply_tokens=3)
    assert request["mock_fault"] == "status=500" and request["mock_reply_tokens"] == 3


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tools_and_tool_choice():
    base = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
        "tools": [WEATHER_TOOL],
    }
    request = to_messages_request(base)
    assert request["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather of a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    assert "tool_choice" not in request
    expected = {
        "auto": {"type": "auto"},
        "none": {"type": "none"},
        "required": {"type": "any"},
    }
    for openai_choice, anthropic_choice in expected.items():
        assert to_messages_request({**base, "tool_choice": openai_choice})["tool_choice"] == anthropic_choice
    forced = to_messages_request({**base, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    assert forced["tool_choice"] == {"type": "tool", "name": "get_weather"}
    serial = to_messages_request({**base, "parallel_tool_calls": False})
    assert serial["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    serial_any = to_messages_request({**base, "tool_choice": "required", "parallel_tool_calls": False})
    assert serial_any["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    # A schema-less function still gets an object input_schema.
    bare = to_messages_request({**base, "tools": [{"type": "function", "function": {"name": "now"}}]})
    assert bare["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    # tool_choice without tools is dropped.
    assert "tool_choice" not in to_messages_request({**base, "tools": [], "tool_choice": "none"})


def test_bad_tool_choice_is_refused():
    with pytest.raises(TranslationError):
        translate({"role": "user", "content": "x"}, tools=[WEATHER_TOOL], tool_choice="sometimes")


def test_tool_call_conversation():
    request = translate(
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "25C"}]},
        {"role": "user", "content": "Thanks"},
    )
    assert request["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "25C"}],
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]


def test_tool_results_come_first_in_a_merged_user_turn():
    request = translate(
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}],
        },
        {"role": "user", "content": "note"},
        {"role": "tool", "tool_call_id": "t1", "content": "ok"},
    )
    assert request["messages"][0]["content"] == [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]
    assert [b["type"] for b in request["messages"][1]["content"]] == ["tool_result", "text"]


@pytest.mark.parametrize(
    "message",
    [
        {
            "role": "assistant",
            "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "not json"}}],
        },
        {"role": "tool", "content": "no id"},
        {"role": "function", "name": "f", "content": "legacy"},
    ],
)
def test_malformed_tool_messages_are_refused(message):
    with pytest.raises(TranslationError):
        translate({"role": "user", "content": "x"}, message)


# --------------------------------------------------------------------------------------------
# Messages response -> OpenAI chat completion
# --------------------------------------------------------------------------------------------


def test_text_response():
    completion = to_chat_completion(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 3},
        },
        created=123,
    )
    assert completion == {
        "id": "msg_1",
        "object": "chat.completion",
        "created": 123,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 3,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def test_tool_use_response():
    completion = to_chat_completion(
        {
            "id": "msg_2",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Paris"}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 30, "output_tokens": 20},
        }
    )
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}


def test_tool_only_response_has_null_content():
    completion = to_chat_completion(
        {
            "type": "message",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            "stop_reason": "tool_use",
        },
        model="m",
    )
    assert completion["choices"][0]["message"]["content"] is None
    assert completion["model"] == "m"
    assert "usage" not in completion  # nothing reported, nothing invented


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        (None, None),
    ],
)
def test_finish_reasons(stop_reason, expected):
    assert finish_reason(stop_reason) == expected


def test_usage_counts_cache_tokens_as_prompt():
    usage = usage_from(
        {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 5,
            "output_tokens": 7,
        }
    )
    assert usage == {
        "prompt_tokens": 115,
        "completion_tokens": 7,
        "total_tokens": 122,
        # Cache writes are carried apart (priced at 1.25x / 2x the input price).
        "prompt_tokens_details": {"cached_tokens": 100, "cache_creation_tokens": 5, "cache_creation_1h_tokens": 0},
    }
    assert usage_from({"input_tokens": 10}) is None
    assert usage_from(None) is None


# --------------------------------------------------------------------------------------------
# Stream events -> OpenAI chunks
# --------------------------------------------------------------------------------------------


def _events(*events):
    return list(events)


TEXT_STREAM = _events(
    {
        "type": "message_start",
        "message": {
            "id": "msg_s",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-x",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    },
    {"type": "message_stop"},
)


def _feed_all(translator, events):
    chunks = []
    for event in events:
        chunks.extend(translator.feed(event))
    return chunks


def test_text_stream_with_usage():
    translator = StreamTranslator("claude-x", include_usage=True, created=7)
    chunks = _feed_all(translator, TEXT_STREAM)
    assert translator.finished
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
        {"content": "!"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "stop"]
    assert all(
        c["id"] == "msg_s"
        and c["object"] == "chat.completion.chunk"
        and c["created"] == 7
        and c["model"] == "claude-x"
        and c["usage"] is None
        for c in chunks[:-1]
    )
    # message_start said output_tokens 1, message_delta 15 (cumulative): 15, not 16.
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 25,
        "completion_tokens": 15,
        "total_tokens": 40,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_text_stream_without_include_usage():
    translator = StreamTranslator("claude-x", include_usage=False)
    chunks = _feed_all(translator, TEXT_STREAM)
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert translator.usage == {
        "prompt_tokens": 25,
        "completion_tokens": 15,
        "total_tokens": 40,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_output_tokens_use_the_latest_cumulative_count():
    translator = StreamTranslator("m", include_usage=True)
    _feed_all(translator, TEXT_STREAM[:-2])
    translator.feed({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 20}})
    translator.feed({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 30}})
    chunks = translator.feed({"type": "message_stop"})
    assert chunks[-1]["usage"]["completion_tokens"] == 30


def test_stream_without_usage_has_no_usage_chunk():
    translator = StreamTranslator("m", include_usage=True)
    events = [dict(e) for e in TEXT_STREAM]
    events[0] = {"type": "message_start", "message": {"id": "msg_s", "content": []}}
    events[-2] = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    chunks = _feed_all(translator, events)
    assert all(c["choices"] for c in chunks)
    assert translator.usage is None


def test_stream_with_only_start_usage_reports_nothing():
    # Only message_delta's count is final: message_start's output_tokens (1) is never billed.
    translator = StreamTranslator("m", include_usage=True)
    events = [dict(e) for e in TEXT_STREAM]
    events[-2] = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    chunks = _feed_all(translator, events)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert translator.usage is None


def test_tool_use_stream():
    translator = StreamTranslator("m", include_usage=False)
    chunks = _feed_all(
        translator,
        _events(
            {
                "type": "message_start",
                "message": {"id": "msg_t", "usage": {"input_tokens": 40, "output_tokens": 1}},
            },
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking"}},
            {"type": "content_block_stop", "index": 0},
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"ci'},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": 'ty": "Paris"}'},
            },
            {"type": "content_block_stop", "index": 1},
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}},
            },
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "{}"},
            },
            {"type": "content_block_stop", "index": 2},
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 60}},
            {"type": "message_stop"},
        ),
    )
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Checking"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]},
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "toolu_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_error_event_raises():
    translator = StreamTranslator("m", include_usage=True)
    translator.feed(TEXT_STREAM[0])
    with pytest.raises(AnthropicStreamError) as caught:
        translator.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert caught.value.error_type == "overloaded_error"


def test_unknown_events_and_deltas_are_ignored():
    translator = StreamTranslator("m", include_usage=False)
    assert translator.feed({"type": "ping"}) == []
    assert translator.feed({"type": "something_new", "x": 1}) == []
    for ignored in (
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_delta", "index": 5, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
    ):
        assert translator.feed(ignored) == [], ignored


def test_message_stop_without_stop_reason_still_finishes():
    translator = StreamTranslator("m", include_usage=False)
    translator.feed(TEXT_STREAM[0])
    chunks = translator.feed({"type": "message_stop"})
    assert [c["choices"][0]["finish_reason"] for c in chunks] == ["stop"]
