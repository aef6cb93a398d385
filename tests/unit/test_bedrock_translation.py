"""BedrockProvider without a network: OpenAI <-> Converse translations, error mapping, and the
thread/queue bridge with a fake bedrock-runtime client."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    EventStreamError,
    NoCredentialsError,
    ReadTimeoutError,
)

from quotagate.config import Provider
from quotagate.providers import bedrock as b
from quotagate.providers.exceptions import StreamInterrupted, UpstreamError, UpstreamTimeout
from tests.helpers import stop_stream_early

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
PNG = b"\x89PNG\r\n\x1a\n-tiny"
PROVIDER = Provider(name="bedrock", type="bedrock", base_url="", connect_timeout=1.0, read_timeout=2.0)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------------
# OpenAI -> Converse
# ---------------------------------------------------------------------------------------------


def test_messages_system_merge_and_inference_config():
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use English."}]},
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "again"}, {"type": "text", "text": "  "}]},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Bye"},
        ],
        "max_tokens": 50,
        "temperature": 0.5,
        "top_p": 1,
        "stop": "END",
        "presence_penalty": 0.3,  # ignored
    }
    assert b.to_converse_request(body) == {
        "modelId": MODEL,
        "system": [{"text": "Be brief."}, {"text": "Use English."}],
        "messages": [
            {"role": "user", "content": [{"text": "Hello"}, {"text": "again"}]},
            {"role": "assistant", "content": [{"text": "Hi!"}]},
            {"role": "user", "content": [{"text": "Bye"}]},
        ],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.5, "topP": 1.0, "stopSequences": ["END"]},
    }


def test_max_completion_tokens_wins_and_stop_lists():
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "x"}],
        "max_completion_tokens": 9,
        "max_tokens": 99,
        "stop": ["a", "", "b"],
    }
    assert b.to_converse_request(body)["inferenceConfig"] == {"maxTokens": 9, "stopSequences": ["a", "b"]}
    assert "inferenceConfig" not in b.to_converse_request(
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    )


def test_image_data_url_becomes_bytes():
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    body = {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": url, "detail": "high"}},
                ],
            }
        ],
    }
    content = b.to_converse_request(body)["messages"][0]["content"]
    assert content == [{"text": "What is this?"}, {"image": {"format": "png", "source": {"bytes": PNG}}}]
    jpg = "data:image/jpg;base64," + base64.b64encode(b"jpeg").decode()
    body["messages"][0]["content"][1]["image_url"]["url"] = jpg
    assert b.to_converse_request(body)["messages"][0]["content"][1]["image"]["format"] == "jpeg"


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "data:image/png,notbase64",
        "data:image/tiff;base64,AAAA",
        "data:image/png;base64,!!!",
    ],
)
def test_unusable_images_are_400(url):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
    }
    with pytest.raises(UpstreamError) as info:
        b.to_converse_request(body)
    assert info.value.status == 400 and info.value.error_type == "invalid_request_error"


def test_tool_round_trip_translation():
    body = {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "Rain"}]},
            {"role": "user", "content": "Thanks. Which is nicer?"},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
    }
    request = b.to_converse_request(body)
    assert request["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}},
                {"toolUse": {"toolUseId": "call_2", "name": "get_weather", "input": {"city": "Rome"}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "call_1", "content": [{"text": "Sunny"}]}},
                {"toolResult": {"toolUseId": "call_2", "content": [{"text": "Rain"}]}},
                {"text": "Thanks. Which is nicer?"},
            ],
        },
    ]
    assert request["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "inputSchema": {"json": WEATHER_TOOL["function"]["parameters"]},
                }
            }
        ],
        "toolChoice": {"auto": {}},
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"tool": {"name": "get_weather"}}),
        (None, None),
    ],
)
def test_tool_choice(choice, expected):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [WEATHER_TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    config = b.to_converse_request(body)["toolConfig"]
    assert config.get("toolChoice") == expected


def test_tool_choice_none_and_synthetic_tools():
    plain = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "x"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": "none",
    }
    assert "toolConfig" not in b.to_converse_request(plain)
    history = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": ""}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    with_tools = b.to_converse_request({**plain, "messages": history})
    assert with_tools["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "inputSchema": {"json": WEATHER_TOOL["function"]["parameters"]},
                }
            }
        ]
    }
    # No tools sent with a tool history: Bedrock needs a toolConfig, so one is made from the history.
    synthetic = b.to_converse_request({"model": MODEL, "messages": history})
    assert synthetic["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {"type": "object", "properties": {}}}}}]
    }
    assert synthetic["messages"][1]["content"][0]["toolUse"]["input"] == {}


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2},
        {"model": MODEL, "messages": [{"role": "system", "content": "only system"}]},
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "code_interpreter"}]},
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "other"}},
        },
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
                    ],
                }
            ],
        },
        {"model": MODEL, "messages": [{"role": "tool", "content": "no id"}]},
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
    ],
)
def test_untranslatable_requests_are_400(body):
    with pytest.raises(UpstreamError) as info:
        b.to_converse_request(body)
    assert info.value.status == 400


# ---------------------------------------------------------------------------------------------
# Converse -> OpenAI
# ---------------------------------------------------------------------------------------------


def test_completion_text_and_usage():
    response = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello"}, {"text": " there"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 10, "outputTokens": 2, "totalTokens": 12},
        "ResponseMetadata": {"RequestId": "abc-123"},
    }
    completion = b.to_chat_completion(response, MODEL)
    assert completion["id"] == "chatcmpl-abc123"
    assert completion["object"] == "chat.completion" and completion["model"] == MODEL
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert completion["usage"] == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}


def test_completion_tool_use():
    response = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}],
            }
        },
        "stopReason": "tool_use",
        "usage": {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12},
    }
    choice = b.to_chat_completion(response, MODEL)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("content_filtered", "content_filter"),
        ("guardrail_intervened", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reasons(stop, finish):
    assert b.finish_reason(stop) == finish


def test_usage_with_cache_tokens_and_missing_usage():
    usage = {
        "inputTokens": 10,
        "outputTokens": 3,
        "totalTokens": 113,
        "cacheReadInputTokens": 80,
        "cacheWriteInputTokens": 20,
    }
    assert b.openai_usage(usage) == {
        "prompt_tokens": 110,
        "completion_tokens": 3,
        "total_tokens": 113,
        "prompt_tokens_details": {"cached_tokens": 80},
    }
    assert b.openai_usage(None) is None
    assert b.openai_usage({"inputTokens": 1}) is None
    response = {"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}}, "stopReason": "end_turn"}
    assert "usage" not in b.to_chat_completion(response, MODEL)
    with pytest.raises(UpstreamError):
        b.to_chat_completion({"stopReason": "end_turn"}, MODEL)


def stream_events():
    return [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"delta": {"text": "Let me"}, "contentBlockIndex": 0}},
        {"contentBlockDelta": {"delta": {"text": " check."}, "contentBlockIndex": 0}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {
            "contentBlockStart": {
                "start": {"toolUse": {"toolUseId": "t1", "name": "get_weather"}},
                "contentBlockIndex": 1,
            }
        },
        {"contentBlockDelta": {"delta": {"toolUse": {"input": '{"city":'}}, "contentBlockIndex": 1}},
        {"contentBlockDelta": {"delta": {"toolUse": {"input": '"Paris"}'}}, "contentBlockIndex": 1}},
        {"contentBlockStop": {"contentBlockIndex": 1}},
        {"contentBlockStart": {"start": {"toolUse": {"toolUseId": "t2", "name": "get_time"}}, "contentBlockIndex": 2}},
        {"contentBlockDelta": {"delta": {"toolUse": {"input": "{}"}}, "contentBlockIndex": 2}},
        {"contentBlockStop": {"contentBlockIndex": 2}},
        {"messageStop": {"stopReason": "tool_use"}},
        {
            "metadata": {
                "usage": {"inputTokens": 20, "outputTokens": 9, "totalTokens": 29},
                "metrics": {"latencyMs": 100},
            }
        },
    ]


def test_stream_translation():
    translator = b.StreamTranslator(MODEL, include_usage=True, completion_id="chatcmpl-x")
    chunks = [c for event in stream_events() for c in translator.feed(event)]
    assert all(c["id"] == "chatcmpl-x" and c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Let me"},
        {"content": " check."},
        {
            "tool_calls": [
                {"index": 0, "id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {
            "tool_calls": [
                {"index": 1, "id": "t2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
    assert translator.finished


def test_stream_translation_without_usage_option():
    translator = b.StreamTranslator(MODEL, include_usage=False)
    chunks = [c for event in stream_events() for c in translator.feed(event)]
    assert all("usage" not in c and c["choices"] for c in chunks)
    assert translator.usage == {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def client_error(code: str, status: int, headers: dict | None = None) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} says no"},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
        },
        "ConverseStream",
    )


@pytest.mark.parametrize(
    ("code", "http", "status", "retry"),
    [
        ("ThrottlingException", 429, 429, 1.0),
        ("ServiceQuotaExceededException", 400, 429, None),
        ("ValidationException", 400, 400, None),
        ("AccessDeniedException", 403, 502, None),
        ("UnrecognizedClientException", 403, 502, None),
        ("ResourceNotFoundException", 404, 502, None),
        ("ServiceUnavailableException", 503, 503, None),
        ("ModelNotReadyException", 429, 503, None),
        ("InternalServerException", 500, 502, None),
        ("ModelErrorException", 424, 502, None),
        ("ModelTimeoutException", 408, 504, None),
        ("SomethingNew", 500, 502, None),
        ("SomethingNew", 409, 409, None),
    ],
)
def test_client_error_mapping(code, http, status, retry):
    error = b.upstream_error(client_error(code, http), "bedrock")
    assert error.status == status
    assert error.retry_after == retry
    assert "says no" not in error.message  # the upstream's text goes to the log only
    # A documented exception names itself; one the gateway does not know stays in the log.
    assert (code in error.message) == (code != "SomethingNew")
    if code == "ModelTimeoutException":
        assert isinstance(error, UpstreamTimeout)


def test_throttling_retry_after_header_and_stream_exception_codes():
    error = b.upstream_error(client_error("ThrottlingException", 429, {"retry-after": "7"}), "bedrock")
    assert (error.status, error.retry_after, error.code) == (429, 7.0, "upstream_rate_limited")
    in_stream = EventStreamError({"Error": {"Code": "throttlingException", "Message": "slow"}}, "ConverseStream")
    assert b.upstream_error(in_stream, "bedrock").status == 429
    interrupted = str(b.interrupted(in_stream, "bedrock"))
    assert "throttlingException" in interrupted and "slow" not in interrupted


def test_transport_error_mapping():
    timeout = b.upstream_error(ReadTimeoutError(endpoint_url="http://x"), "bedrock")
    assert isinstance(timeout, UpstreamTimeout) and timeout.status == 504
    connect = b.upstream_error(ConnectTimeoutError(endpoint_url="http://x"), "bedrock")
    assert isinstance(connect, UpstreamTimeout)
    unreachable = b.upstream_error(EndpointConnectionError(endpoint_url="http://x"), "bedrock")
    assert (unreachable.status, unreachable.code) == (502, "upstream_unreachable")
    creds = b.upstream_error(NoCredentialsError(), "bedrock")
    assert (creds.status, creds.code) == (503, "provider_credentials_unavailable")
    assert b.upstream_error(RuntimeError("x"), "bedrock").status == 502
    assert "silent" in str(b.interrupted(ReadTimeoutError(endpoint_url="http://x"), "bedrock"))
    assert "dropped" in str(b.interrupted(ConnectionResetError(), "bedrock"))


def test_region_and_default_client(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert b.provider_region(PROVIDER) == "eu-west-1"
    client = b.default_client(PROVIDER)
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.read_timeout == 2.0 and client.meta.config.connect_timeout == 1.0
    assert client.meta.config.retries["total_max_attempts"] == 1
    assert b.default_client(PROVIDER) is client  # shared
    local = Provider(name="local", type="bedrock", base_url="http://127.0.0.1:9", read_timeout=3.0)
    assert b.default_client(local).meta.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(UpstreamError) as info:
        b.default_client(PROVIDER)
    assert info.value.code == "provider_misconfigured"


# ---------------------------------------------------------------------------------------------
# The provider with a fake client
# ---------------------------------------------------------------------------------------------


class FakeRaw:
    def __init__(self) -> None:
        self.shut = threading.Event()

    def shutdown(self) -> None:
        self.shut.set()


class FakeStream:
    """Like botocore's EventStream: iterates events, ``close()``; blocks when told to, until shut."""

    def __init__(self, events, error: Exception | None = None, block_after: int | None = None) -> None:
        self._events = events
        self._error = error
        self._block_after = block_after
        self._raw_stream = FakeRaw()
        self.closed = threading.Event()

    def __iter__(self):
        for i, event in enumerate(self._events):
            if self._block_after is not None and i >= self._block_after:
                self._raw_stream.shut.wait(10)
                raise ConnectionResetError("socket shut down")
            yield event
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self.closed.set()


class FakeClient:
    def __init__(
        self, stream: FakeStream | None = None, response: dict | None = None, error: Exception | None = None
    ) -> None:
        self.stream, self.response, self.error = stream, response, error
        self.requests: list[dict] = []

    def converse(self, **request):
        self.requests.append(request)
        if self.error:
            raise self.error
        return self.response

    def converse_stream(self, **request):
        self.requests.append(request)
        if self.error:
            raise self.error
        return {"stream": self.stream}


BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 10,
    "stream": True,
    "stream_options": {"include_usage": True},
}


async def collect(provider: b.BedrockProvider, body: dict = BODY) -> list:
    return [event async for event in provider.stream(body)]


def test_stream_through_fake_client():
    client = FakeClient(FakeStream(stream_events()))
    provider = b.BedrockProvider(PROVIDER, client_factory=lambda: client)
    events = run(collect(provider))
    assert events[-1].done
    assert events[-2].data["usage"]["total_tokens"] == 29
    assert client.requests[0]["modelId"] == MODEL
    assert client.requests[0]["inferenceConfig"] == {"maxTokens": 10}
    assert client.stream.closed.is_set()


def test_complete_through_fake_client():
    response = {
        "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
        "stopReason": "max_tokens",
        "usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3},
    }
    provider = b.BedrockProvider(PROVIDER, client_factory=lambda: FakeClient(response=response))
    completion = run(provider.complete({**BODY, "stream": False}))
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 2
    failing = b.BedrockProvider(
        PROVIDER, client_factory=lambda: FakeClient(error=client_error("ThrottlingException", 429))
    )
    with pytest.raises(UpstreamError) as info:
        run(failing.complete(BODY))
    assert info.value.status == 429


def test_error_before_first_event_is_upstream_error():
    provider = b.BedrockProvider(
        PROVIDER, client_factory=lambda: FakeClient(error=client_error("ServiceUnavailableException", 503))
    )
    with pytest.raises(UpstreamError) as info:
        run(collect(provider))
    assert info.value.status == 503
    # An exception event before any content is still "before the first event".
    stream = FakeStream(
        [], error=EventStreamError({"Error": {"Code": "throttlingException", "Message": "s"}}, "ConverseStream")
    )
    provider = b.BedrockProvider(PROVIDER, client_factory=lambda: FakeClient(stream))
    with pytest.raises(UpstreamError) as info:
        run(collect(provider))
    assert info.value.status == 429


def test_error_after_first_event_is_stream_interrupted():
    stream = FakeStream(stream_events()[:3], error=ConnectionResetError("gone"))
    provider = b.BedrockProvider(PROVIDER, client_factory=lambda: FakeClient(stream))

    async def consume():
        seen = []
        with pytest.raises(StreamInterrupted):
            async for event in provider.stream(BODY):
                seen.append(event)
        return seen

    seen = run(consume())
    assert [e.data["choices"][0]["delta"] for e in seen] == [
        {"role": "assistant", "content": ""},
        {"content": "Let me"},
        {"content": " check."},
    ]


def test_stream_ending_without_message_stop():
    short = FakeStream(stream_events()[:2])
    truncated = b.BedrockProvider(PROVIDER, client_factory=lambda: FakeClient(short))
    with pytest.raises(StreamInterrupted):
        run(collect(truncated))
    empty = b.BedrockProvider(PROVIDER, client_factory=lambda: FakeClient(FakeStream([])))
    with pytest.raises(UpstreamError) as info:
        run(collect(empty))
    assert info.value.status == 502


def test_translation_error_raised_before_any_call():
    client = FakeClient(FakeStream(stream_events()))
    provider = b.BedrockProvider(PROVIDER, client_factory=lambda: client)
    with pytest.raises(UpstreamError) as info:
        run(collect(provider, {**BODY, "n": 3}))
    assert info.value.status == 400 and client.requests == []


@pytest.mark.parametrize("how", ["aclose", "cancel"])
def test_closing_the_iterator_shuts_the_upstream_socket(how):
    stream = FakeStream(stream_events(), block_after=3)
    provider = b.BedrockProvider(PROVIDER, client_factory=lambda: FakeClient(stream))

    async def scenario():
        await stop_stream_early(provider.stream(BODY), how, received=3)

    started = time.monotonic()
    run(scenario())
    assert stream._raw_stream.shut.wait(2)
    assert stream.closed.wait(2)  # the worker closed the stream once woken
    assert time.monotonic() - started < 5


def test_payload_is_json_serialisable_for_sse():
    client = FakeClient(FakeStream(stream_events()))
    provider = b.BedrockProvider(PROVIDER, client_factory=lambda: client)
    for event in run(collect(provider)):
        if not event.done:
            assert json.loads(event.raw[len(b"data: ") :]) == event.data
