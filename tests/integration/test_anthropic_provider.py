"""AnthropicProvider against the mock's Anthropic Messages endpoint under a real uvicorn, over httpx."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from quotagate import tokens
from quotagate.config import Provider
from quotagate.providers.anthropic import AnthropicProvider, to_messages_request
from quotagate.providers.exceptions import StreamInterrupted, UpstreamError, UpstreamTimeout
from quotagate_tools.mock import MockServer, MockSettings, reply_pieces, reply_text
from quotagate_tools.mock.anthropic import input_tokens_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from quotagate.providers.base import SSEEvent

pytestmark = pytest.mark.timeout(60)

TOKEN_DELAY = 0.002
MODEL = "claude-mock"
SYSTEM = "You answer in one line."
MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Explain quotas to a new engineer, please."},
]
CONVERSATION = [{"role": "system", "content": SYSTEM}, MESSAGES[1]]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def mock():
    with MockServer(MockSettings(token_delay=TOKEN_DELAY)) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_mock():
    with MockServer(MockSettings(token_delay=TOKEN_DELAY, api_key="sk-ant-mock-secret")) as server:
        yield server


def provider_config(server: MockServer, read_timeout: float = 10.0) -> Provider:
    return Provider(
        name="anthropic-mock",
        type="anthropic",
        base_url=server.base_url + "/v1",
        api_key_secret=None,
        connect_timeout=2.0,
        read_timeout=read_timeout,
    )


def no_key() -> Callable[[], Awaitable[str | None]]:
    async def key() -> str | None:
        return None

    return key


def fixed_key(value: str) -> Callable[[], Awaitable[str | None]]:
    async def key() -> str | None:
        return value

    return key


def body(stream: bool = False, **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 256}
    if stream:
        request.update(stream=True, stream_options={"include_usage": True})
    request.update(overrides)
    return request


async def _complete(
    server: MockServer,
    request: dict[str, Any],
    *,
    read_timeout: float = 10.0,
    key: Callable[[], Awaitable[str | None]] | None = None,
) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        provider = AnthropicProvider(provider_config(server, read_timeout), http, key or no_key())
        return await provider.complete(request)


async def _stream(
    server: MockServer,
    request: dict[str, Any],
    *,
    read_timeout: float = 10.0,
    key: Callable[[], Awaitable[str | None]] | None = None,
) -> tuple[list[SSEEvent], BaseException | None]:
    """Every event until the end or an exception (returned, with the events before it)."""
    events: list[SSEEvent] = []
    async with httpx.AsyncClient() as http:
        provider = AnthropicProvider(provider_config(server, read_timeout), http, key or no_key())
        try:
            async for event in provider.stream(request):
                events.append(event)
        except (UpstreamError, StreamInterrupted) as error:
            return events, error
    return events, None


def complete(server: MockServer, request: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(_complete(server, request, **kwargs))


def stream(server: MockServer, request: dict[str, Any], **kwargs: Any) -> tuple[list[SSEEvent], Any]:
    return asyncio.run(_stream(server, request, **kwargs))


def settled(stats) -> bool:
    """Wait until the mock has accounted for every request (abandoned ones end a moment later)."""
    return stats.wait_for(lambda s: s["in_flight"] == 0, timeout=10)


def chunks_of(events: list[SSEEvent]) -> list[dict[str, Any]]:
    assert events and events[-1].done and events[-1].raw == b"data: [DONE]\n\n"
    chunks = [event.data for event in events[:-1]]
    assert all(chunk is not None and chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    for event in events[:-1]:  # the bytes forwarded are the chunk itself
        assert event.raw.startswith(b"data: ") and event.raw.endswith(b"\n\n")
        assert json.loads(event.raw[6:]) == event.data
    return chunks  # type: ignore[return-value]


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_non_stream(mock, stats):
    completion = complete(mock, body())
    assert completion["object"] == "chat.completion" and completion["id"].startswith("msg_")
    assert completion["model"] == MODEL and isinstance(completion["created"], int)
    [choice] = completion["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {
        "role": "assistant",
        "content": reply_text(CONVERSATION, 24),
        "refusal": None,
    }
    expected_prompt = tokens.chat_prompt_tokens(CONVERSATION)
    assert completion["usage"]["prompt_tokens"] == expected_prompt == stats["prompt_tokens"]
    assert completion["usage"]["completion_tokens"] == 24 == stats["completion_tokens"]
    assert completion["usage"]["total_tokens"] == expected_prompt + 24
    # What went over the wire: the system prompt on top, headers as Anthropic wants them.
    sent = stats.last_request
    assert sent["body"]["system"] == SYSTEM
    assert sent["body"]["messages"] == [MESSAGES[1]]
    assert sent["body"]["max_tokens"] == 256 and sent["body"].get("stream") is not True
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert "x-api-key" not in sent["headers"]


def test_stream_with_usage(mock, stats):
    events, error = stream(mock, body(stream=True))
    assert error is None
    chunks = chunks_of(events)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content_of(chunks) == reply_text(CONVERSATION, 24)
    content_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert [c["choices"][0]["delta"]["content"] for c in content_chunks] == reply_pieces(CONVERSATION, 24)
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert stats.wait_for(lambda counts: counts["in_flight"] == 0)  # counted once the last event is out
    assert usage_chunk["usage"]["prompt_tokens"] == stats["prompt_tokens"] == tokens.chat_prompt_tokens(CONVERSATION)
    # message_start said output_tokens 1, message_delta 24 (cumulative): 24, never 25.
    assert usage_chunk["usage"]["completion_tokens"] == stats["completion_tokens"] == 24
    assert all(c["usage"] is None for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1
    assert stats.last_request["body"]["stream"] is True
    assert "stream_options" not in stats.last_request["body"]


def test_stream_without_include_usage_has_no_usage_chunk(mock, stats):
    events, error = stream(mock, {**body(), "stream": True})  # no stream_options
    assert error is None
    chunks = chunks_of(events)
    assert all(c["choices"] for c in chunks) and all("usage" not in c for c in chunks)
    assert content_of(chunks) == reply_text(CONVERSATION, 24)


def test_max_tokens_is_finish_reason_length(mock, stats):
    completion = complete(mock, body(max_tokens=5))
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["choices"][0]["message"]["content"] == reply_text(CONVERSATION, 5)
    assert completion["usage"]["completion_tokens"] == 5
    events, _ = stream(mock, body(stream=True, max_completion_tokens=4))
    chunks = chunks_of(events)
    assert content_of(chunks) == reply_text(CONVERSATION, 4)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert stats.last_request["body"]["max_tokens"] == 4


def test_stop_sequences(mock, stats):
    text = reply_text(CONVERSATION, 24)
    stop = reply_pieces(CONVERSATION, 24)[6]
    completion = complete(mock, body(stop=stop))
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["choices"][0]["message"]["content"] == text[: text.find(stop)]
    assert stats.last_request["body"]["stop_sequences"] == [stop]
    events, _ = stream(mock, body(stream=True, stop=["zzz-not-there", stop]))
    chunks = chunks_of(events)
    assert content_of(chunks) == text[: text.find(stop)]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"


def test_tools_round_trip(mock, stats):
    first = complete(mock, body(tools=TOOLS))
    choice = first["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == reply_text(CONVERSATION, 24)
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert set(arguments) == {"city", "days"} and isinstance(arguments["days"], int)
    sent = stats.last_request["body"]
    assert sent["tools"][0]["name"] == "get_weather" and sent["tools"][0]["input_schema"]["required"] == ["city"]

    follow_up = [
        *MESSAGES,
        choice["message"],
        {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"},
    ]
    second = complete(mock, body(tools=TOOLS, messages=follow_up))
    assert second["choices"][0]["finish_reason"] == "stop"
    assert "tool_calls" not in second["choices"][0]["message"]
    wire = stats.last_request["body"]["messages"]
    assert [m["role"] for m in wire] == ["user", "assistant", "user"]
    assert wire[1]["content"][-1] == {
        "type": "tool_use",
        "id": call["id"],
        "name": "get_weather",
        "input": arguments,
    }
    assert wire[2]["content"] == [{"type": "tool_result", "tool_use_id": call["id"], "content": "18C and sunny"}]
    # The mock's counts cover what was sent, tool blocks included.
    assert second["usage"]["prompt_tokens"] == input_tokens_of(to_messages_request(body(messages=follow_up)))


def test_streamed_tool_call(mock, stats):
    events, error = stream(mock, body(stream=True, tools=TOOLS, tool_choice="required"))
    assert error is None
    chunks = chunks_of(events)
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and c["choices"][0]["delta"].get("tool_calls")
    ]
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("toolu_")
    assert calls[0]["function"]["name"] == "get_weather"
    assert all(call["index"] == 0 for call in calls) and len(calls) > 2  # arguments arrive in pieces
    arguments = json.loads("".join(call["function"]["arguments"] for call in calls))
    assert set(arguments) == {"city", "days"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    # The mock counts a stream once its last event is out: a moment after the client has read it.
    assert stats.wait_for(lambda counts: counts["in_flight"] == 0)
    assert chunks[-1]["usage"]["completion_tokens"] == stats["completion_tokens"] > 0
    assert stats.last_request["body"]["tool_choice"] == {"type": "any"}


def test_api_key_is_sent_as_x_api_key(keyed_mock):
    keyed_mock.stats.reset()
    completion = complete(keyed_mock, body(), key=fixed_key("sk-ant-mock-secret"))
    assert completion["choices"][0]["message"]["content"]
    headers = keyed_mock.stats.last_request["headers"]
    assert headers["x-api-key"] == "<redacted>" and "authorization" not in headers
    with pytest.raises(UpstreamError) as wrong:
        complete(keyed_mock, body(), key=fixed_key("sk-ant-wrong"))
    # The provider's status reaches the client, its text only the log.
    assert wrong.value.status == 502 and "HTTP 401" in wrong.value.message
    assert "invalid x-api-key" not in wrong.value.message
    events, error = stream(keyed_mock, body(stream=True), key=fixed_key("sk-ant-mock-secret"))
    assert error is None and chunks_of(events)[-1]["usage"]["completion_tokens"] == 24


@pytest.mark.parametrize(
    ("fault", "status", "retry_after"),
    [
        ("status=500", 502, None),
        ("status=529", 503, 1.0),
        ("status=429&retry_after=3", 429, 3.0),
        ("status=400", 400, None),
    ],
)
def test_error_status_before_first_event(mock, stats, fault, status, retry_after):
    with pytest.raises(UpstreamError) as non_stream:
        complete(mock, body(mock_fault=fault))
    assert non_stream.value.status == status and non_stream.value.retry_after == retry_after
    events, error = stream(mock, body(stream=True, model=f"{MODEL}@{fault}"))
    assert events == [] and isinstance(error, UpstreamError) and not isinstance(error, UpstreamTimeout)
    assert error.status == status and error.retry_after == retry_after
    if status == 503:
        assert error.code == "upstream_overloaded"


def test_drop_after_interrupts_the_stream(mock, stats):
    events, error = stream(mock, body(stream=True, mock_fault="drop_after=3"))
    assert isinstance(error, StreamInterrupted)
    assert [e.data["choices"][0]["delta"] for e in events if e.data] == [
        {"role": "assistant", "content": ""},
        *({"content": p} for p in reply_pieces(CONVERSATION, 3)),
    ]
    assert not any(e.done for e in events)
    assert stats.wait_for(lambda s: s["streams_cut"] == 1)


def test_drop_after_non_stream_is_an_upstream_error(mock, stats):
    with pytest.raises(UpstreamError) as caught:
        complete(mock, body(mock_fault="drop_after=2"))
    assert caught.value.status == 502


def test_omit_usage(mock, stats):
    events, error = stream(mock, body(stream=True, mock_fault="omit_usage"))
    assert error is None
    chunks = chunks_of(events)
    assert all(c["choices"] for c in chunks)  # no usage chunk: nothing was reported
    assert content_of(chunks) == reply_text(CONVERSATION, 24)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert "usage" not in complete(mock, body(mock_fault="omit_usage"))


def test_slow_first_byte_is_a_timeout(mock, stats):
    with pytest.raises(UpstreamTimeout) as non_stream:
        complete(mock, body(mock_fault="delay_first_byte=2"), read_timeout=0.3)
    assert non_stream.value.status == 504
    events, error = stream(mock, body(stream=True, mock_fault="delay_first_byte=2"), read_timeout=0.3)
    assert events == [] and isinstance(error, UpstreamTimeout)
    assert settled(stats) and stats["client_disconnects"] == 2


def test_silence_mid_stream_is_an_interruption(mock, stats):
    events, error = stream(mock, body(stream=True, mock_fault="token_delay=1"), read_timeout=0.3)
    assert isinstance(error, StreamInterrupted)
    assert events and events[0].data["choices"][0]["delta"]["role"] == "assistant"
    assert settled(stats) and stats["client_disconnects"] == 1


def test_closing_the_iterator_cancels_the_upstream_call(mock, stats):
    async def run() -> list[SSEEvent]:
        async with httpx.AsyncClient() as http:
            provider = AnthropicProvider(provider_config(mock), http, no_key())
            iterator = provider.stream(body(stream=True, mock_token_delay=0.2))
            received = [await iterator.__anext__(), await iterator.__anext__()]
            await iterator.aclose()  # type: ignore[attr-defined]
            return received

    received = asyncio.run(run())
    assert received[1].data["choices"][0]["delta"]["content"] == reply_pieces(CONVERSATION, 1)[0]
    assert stats.wait_for(lambda s: s["client_disconnects"] == 1 and s["in_flight"] == 0, timeout=10)
    assert stats["completed"] == 0


def test_unsupported_request_is_refused_without_calling_upstream(mock, stats):
    with pytest.raises(UpstreamError) as caught:
        complete(mock, body(n=2))
    assert caught.value.status == 400
    assert stats["chat_requests"] == 0


# -- native pass-through (POST /v1/messages to an Anthropic target) --------------------------------


async def _native(server: MockServer, request: dict[str, Any]) -> tuple[list[SSEEvent], BaseException | None]:
    events: list[SSEEvent] = []
    async with httpx.AsyncClient() as http:
        provider = AnthropicProvider(provider_config(server), http, no_key())
        try:
            async for event in provider.stream_messages(request):
                events.append(event)
        except Exception as error:
            return events, error
    return events, None


def test_stream_messages_sends_the_body_as_it_is_and_yields_anthropics_own_events(mock):
    from quotagate.providers.anthropic import native_request
    from quotagate_tools.mock.anthropic import THINKING_TOKENS, thinking_signature

    client_body = {
        "model": "alias-the-client-used",
        "max_tokens": 4000,
        "system": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "top_k": 3,
        "metadata": {"user_id": "u-1"},
        "messages": [{"role": "user", "content": "Why is the sky blue?"}],
    }
    request = native_request(client_body, MODEL, 2000)
    events, error = asyncio.run(_native(mock, request))
    assert error is None
    sent = mock.stats.last_request["body"]
    assert sent == {**client_body, "model": MODEL, "max_tokens": 2000, "stream": True}
    kinds = [event.data["type"] for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "ping" not in kinds
    assert events[-1].done and not any(event.done for event in events[:-1])
    for event in events:  # the bytes are the event, framed as Anthropic frames it
        name, data = event.raw.decode().rstrip("\n").split("\n")
        assert name == f"event: {event.data['type']}" and json.loads(data[6:]) == event.data
    deltas = [event.data["delta"] for event in events if event.data["type"] == "content_block_delta"]
    thought = "".join(d["thinking"] for d in deltas if d["type"] == "thinking_delta")
    assert len([d for d in deltas if d["type"] == "thinking_delta"]) == THINKING_TOKENS
    assert [d["signature"] for d in deltas if d["type"] == "signature_delta"] == [thinking_signature(thought)]
    assert events[0].data["message"]["usage"]["cache_creation_input_tokens"] > 0


def test_stream_messages_errors_before_and_after_the_first_event(mock):
    request = {"model": MODEL + "@status=529", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
    events, error = asyncio.run(_native(mock, request))
    assert events == [] and isinstance(error, UpstreamError) and error.status == 503
    events, error = asyncio.run(_native(mock, {**request, "model": MODEL + "@drop_after=2"}))
    assert events and isinstance(error, StreamInterrupted)
