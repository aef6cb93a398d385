"""BedrockProvider with a real boto3 bedrock-runtime client against the mock's Converse /
ConverseStream routes under a real uvicorn (endpoint_url = the mock, dummy credentials)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest
from botocore.config import Config

from quotagate.config import Provider
from quotagate.providers.bedrock import BedrockProvider, to_converse_request
from quotagate.providers.exceptions import StreamInterrupted, UpstreamError, UpstreamTimeout
from quotagate_tools.mock import MockServer, MockSettings
from quotagate_tools.mock import bedrock as mb
from quotagate_tools.mock.eventstream import EventStreamDecoder
from tests.helpers import stop_stream_early

if TYPE_CHECKING:
    from quotagate.providers.base import SSEEvent

pytestmark = pytest.mark.timeout(60)

TOKEN_DELAY = 0.002
SETTINGS = MockSettings(token_delay=TOKEN_DELAY)
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
MESSAGES = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "Explain quotas to a new engineer, please."},
]
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


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)


@pytest.fixture(scope="module")
def mock():
    with MockServer(SETTINGS) as server:
        yield server


def provider_for(mock: MockServer, read_timeout: float = 5.0) -> BedrockProvider:
    config = Provider(
        name="bedrock-mock", type="bedrock", base_url=mock.base_url, connect_timeout=2.0, read_timeout=read_timeout
    )
    return BedrockProvider(config)


@pytest.fixture
def provider(mock):
    return provider_for(mock)


def body(stream: bool = True, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 256, **extra}
    if stream:
        result.update(stream=True, stream_options={"include_usage": True})
    return result


def expected_plan(openai_body: dict[str, Any], stream: bool = True) -> mb.ConversePlan:
    """What the mock answers to the Converse request this OpenAI body translates to."""
    request = to_converse_request(openai_body)
    model = request.pop("modelId")
    return mb.plan_converse(
        model, json.loads(json.dumps(request, default=lambda b: "<bytes>")), SETTINGS, stream=stream
    )


def run(coro):
    return asyncio.run(coro)


async def collect(provider: BedrockProvider, request: dict[str, Any]) -> list[SSEEvent]:
    return [event async for event in provider.stream(request)]


async def collect_until_error(provider: BedrockProvider, request: dict[str, Any]) -> tuple[list, BaseException]:
    events: list[SSEEvent] = []
    try:
        async for event in provider.stream(request):
            events.append(event)
    except (UpstreamError, StreamInterrupted) as exc:
        return events, exc
    raise AssertionError("the stream did not fail")


def content_of(events: list[SSEEvent]) -> str:
    return "".join(
        e.data["choices"][0]["delta"].get("content") or "" for e in events if e.data and e.data.get("choices")
    )


def finish_of(events: list[SSEEvent]) -> str | None:
    reasons = [e.data["choices"][0]["finish_reason"] for e in events if e.data and e.data.get("choices")]
    return next((r for r in reasons if r), None)


def usage_of(events: list[SSEEvent]) -> dict | None:
    usages = (e.data["usage"] for e in events if e.data and not e.data.get("choices") and e.data.get("usage"))
    return next(usages, None)


# ---------------------------------------------------------------------------------------------
# The mock through a plain boto3 client
# ---------------------------------------------------------------------------------------------


def test_plain_boto3_client_against_the_mock(mock, stats):
    client = boto3.client(
        "bedrock-runtime",
        endpoint_url=mock.base_url,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}),
    )
    messages = [{"role": "user", "content": [{"text": "Hello there"}]}]
    response = client.converse(modelId=MODEL, messages=messages, inferenceConfig={"maxTokens": 7})
    assert response["stopReason"] == "max_tokens" and response["usage"]["outputTokens"] == 7
    events = list(client.converse_stream(modelId=MODEL, messages=messages)["stream"])
    assert list(events[0]) == ["messageStart"] and list(events[-1]) == ["metadata"]
    assert events[-2] == {"messageStop": {"stopReason": "end_turn"}}
    assert stats.last_request["model"] == MODEL  # ':' arrived percent-encoded and was decoded once
    with pytest.raises(client.exceptions.ThrottlingException):
        client.converse(modelId=MODEL + "@status=429", messages=messages)


def test_raw_http_stream_and_header_fault(mock, stats):
    url = f"{mock.base_url}/model/{MODEL.replace(':', '%3A')}/converse-stream"
    payload = {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "mock_reply_tokens": 4}
    with httpx.Client(timeout=10) as http:
        raw = http.post(url, json=payload)
        decoder = EventStreamDecoder()
        names = [m.event_type for m in decoder.feed(raw.content)]
        assert decoder.pending == 0
        assert names == ["messageStart", *["contentBlockDelta"] * 4, "contentBlockStop", "messageStop", "metadata"]
        failed = http.post(url, json=payload, headers={"x-mock-fault": "status=503"})
        assert failed.status_code == 503
        assert failed.headers["x-amzn-errortype"].startswith("ServiceUnavailableException")


# ---------------------------------------------------------------------------------------------
# BedrockProvider: replies, usage, tools
# ---------------------------------------------------------------------------------------------


def test_complete_text_and_usage(provider, stats):
    request = body(stream=False)
    plan = expected_plan(request, stream=False)
    completion = run(provider.complete(request))
    assert completion["object"] == "chat.completion" and completion["model"] == MODEL
    choice = completion["choices"][0]
    assert choice["message"]["content"] == plan.text and choice["finish_reason"] == "stop"
    assert completion["usage"] == {
        "prompt_tokens": plan.input_tokens,
        "completion_tokens": plan.output_tokens,
        "total_tokens": plan.input_tokens + plan.output_tokens,
    }
    snapshot = stats.snapshot()
    assert snapshot["prompt_tokens"] == plan.input_tokens
    assert snapshot["completion_tokens"] == plan.output_tokens
    recorded = stats.last_request["body"]
    assert recorded["system"] == [{"text": "You answer in one line."}]
    assert recorded["inferenceConfig"] == {"maxTokens": 256}


def test_stream_text_and_usage(provider, stats):
    request = body()
    plan = expected_plan(request)
    events = run(collect(provider, request))
    assert events[-1].done
    chunks = [e.data for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert content_of(events) == plan.text
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) == 24
    assert finish_of(events) == "stop"
    usage = usage_of(events)
    assert usage == {
        "prompt_tokens": plan.input_tokens,
        "completion_tokens": plan.output_tokens,
        "total_tokens": plan.input_tokens + plan.output_tokens,
    }
    # The server counts a stream once its last frame is out: a moment after the client has read it.
    assert stats.wait_for(lambda counts: counts["in_flight"] == 0)
    snapshot = stats.snapshot()
    assert (snapshot["prompt_tokens"], snapshot["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert snapshot["completed"] == 1 and snapshot["in_flight"] == 0


def test_max_tokens_gives_length(provider):
    events = run(collect(provider, body(max_tokens=5)))
    assert finish_of(events) == "length"
    assert usage_of(events)["completion_tokens"] == 5
    completion = run(provider.complete(body(stream=False, max_tokens=5)))
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 5


def test_stop_sequence(provider):
    full = expected_plan(body())
    stop = full.text_pieces[8]
    events = run(collect(provider, body(stop=[stop])))
    assert content_of(events) == full.text[: full.text.index(stop)]
    assert finish_of(events) == "stop"
    assert usage_of(events)["completion_tokens"] == 9


def test_tools_stream_complete_and_follow_up(provider):
    request = body(tools=TOOLS, tool_choice="auto")
    plan = expected_plan(request)
    events = run(collect(provider, request))
    assert finish_of(events) == "tool_calls"
    calls = [
        tc
        for e in events
        if e.data and e.data.get("choices")
        for tc in e.data["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert calls[0]["id"] == plan.tool_use["toolUseId"] and calls[0]["function"]["name"] == "get_weather"
    assert {c["index"] for c in calls} == {0}
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == plan.tool_use["input"] and "city" in json.loads(arguments)
    assert usage_of(events)["completion_tokens"] == plan.output_tokens

    completion = run(provider.complete({**request, "stream": False}))
    message = completion["choices"][0]["message"]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"][0]["function"]["arguments"] == arguments

    # The client runs the tool and continues: Bedrock needs toolResult in a user turn, alternation...
    follow_up = body(
        stream=False,
        tools=TOOLS,
        messages=[
            *MESSAGES,
            {"role": "assistant", "content": message["content"], "tool_calls": message["tool_calls"]},
            {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "Sunny, 21 C"},
        ],
    )
    answer = run(provider.complete(follow_up))
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["choices"][0]["message"]["content"] == expected_plan(follow_up, stream=False).text


def test_image_and_merged_user_turns(provider, stats):
    url = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    request = body(
        stream=False,
        messages=[
            {"role": "user", "content": "First part."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Look:"}, {"type": "image_url", "image_url": {"url": url}}],
            },
        ],
    )
    completion = run(provider.complete(request))
    assert completion["choices"][0]["message"]["content"] == expected_plan(request, stream=False).text
    sent = stats.last_request["body"]["messages"]
    assert len(sent) == 1 and sent[0]["content"][2]["image"]["format"] == "png"
    assert base64.b64decode(sent[0]["content"][2]["image"]["source"]["bytes"]) == b"\x89PNG fake"


def test_model_arn_reaches_the_mock(provider, stats):
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-v1:0"
    run(provider.complete(body(stream=False, model=arn)))
    assert stats.last_request["model"] == arn


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "status"), [("status=500", 502), ("status=503", 503), ("status=403", 502), ("status=400", 400)]
)
def test_error_statuses_before_first_event(provider, stats, spec, status):
    events, error = run(collect_until_error(provider, body(model=f"{MODEL}@{spec}")))
    assert events == []
    assert isinstance(error, UpstreamError) and error.status == status
    with pytest.raises(UpstreamError) as info:
        run(provider.complete(body(stream=False, model=f"{MODEL}@{spec}")))
    assert info.value.status == status
    assert stats.snapshot()["error_responses"] == 2


def test_throttling_is_429_with_retry(provider):
    events, error = run(collect_until_error(provider, body(model=f"{MODEL}@status=429")))
    assert events == [] and isinstance(error, UpstreamError)
    assert (error.status, error.code) == (429, "upstream_rate_limited") and error.retry_after
    with pytest.raises(UpstreamError) as info:
        run(provider.complete(body(stream=False, model=f"{MODEL}@status=429&retry_after=4")))
    assert (info.value.status, info.value.retry_after) == (429, 4.0)


def test_drop_after_is_stream_interrupted(provider, stats):
    events, error = run(collect_until_error(provider, body(model=f"{MODEL}@drop_after=3")))
    assert isinstance(error, StreamInterrupted)
    contents = [e for e in events if e.data["choices"] and e.data["choices"][0]["delta"].get("content")]
    assert len(events) == 4 and len(contents) == 3  # role chunk + 3 tokens, then the cut
    assert stats.wait_for(lambda s: s["streams_cut"] == 1)
    # Non-stream: half a body, then the connection closes.
    with pytest.raises(UpstreamError) as info:
        run(provider.complete(body(stream=False, model=f"{MODEL}@drop_after=3")))
    assert info.value.status == 502


def test_omit_usage_means_no_usage_chunk(provider):
    events = run(collect(provider, body(model=f"{MODEL}@omit_usage")))
    assert events[-1].done and finish_of(events) == "stop"
    assert usage_of(events) is None
    completion = run(provider.complete(body(stream=False, model=f"{MODEL}@omit_usage")))
    assert "usage" not in completion


def test_slow_first_byte_is_upstream_timeout(mock, stats):
    provider = provider_for(mock, read_timeout=0.4)
    started = time.monotonic()
    events, error = run(collect_until_error(provider, body(model=f"{MODEL}@delay_first_byte=3")))
    assert events == [] and isinstance(error, UpstreamTimeout) and error.status == 504
    with pytest.raises(UpstreamTimeout):
        run(provider.complete(body(stream=False, model=f"{MODEL}@delay_first_byte=3")))
    assert time.monotonic() - started < 2.5  # two timeouts of 0.4 s, no retries
    assert stats.wait_for(lambda s: s["client_disconnects"] == 2 and s["in_flight"] == 0)


def test_silence_mid_stream_is_stream_interrupted(mock):
    provider = provider_for(mock, read_timeout=0.4)
    events, error = run(collect_until_error(provider, body(model=f"{MODEL}@token_delay=2")))
    assert isinstance(error, StreamInterrupted) and "silent" in str(error)
    assert len(events) == 1  # the role chunk from messageStart


def test_unreachable_endpoint():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = Provider(
        name="gone", type="bedrock", base_url=f"http://127.0.0.1:{port}", connect_timeout=0.5, read_timeout=1.0
    )
    events, error = run(collect_until_error(BedrockProvider(config), body()))
    assert events == [] and isinstance(error, UpstreamError) and error.status == 502


# ---------------------------------------------------------------------------------------------
# Cancellation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["aclose", "cancel"])
def test_closing_the_stream_stops_the_upstream(provider, stats, how):
    request = body(model=f"{MODEL}@token_delay=0.2&tokens=500")

    async def scenario() -> None:
        await stop_stream_early(provider.stream(request), how, received=3)  # role chunk + 2 tokens

    started = time.monotonic()
    run(scenario())
    assert stats.wait_for(lambda s: s["client_disconnects"] == 1 and s["in_flight"] == 0, timeout=5)
    assert time.monotonic() - started < 3  # 500 tokens at 0.2 s would take 100 s
    assert stats.snapshot()["completed"] == 0


def test_concurrent_streams(provider, stats):
    async def many() -> list[list[SSEEvent]]:
        return await asyncio.gather(
            *(collect(provider, body(messages=[{"role": "user", "content": f"q{i}"}])) for i in range(8))
        )

    results = run(many())
    assert all(events[-1].done and usage_of(events) for events in results)
    # the mock counts a stream just after its client read the last event
    assert stats.wait_for(lambda s: s["completed"] == 8, timeout=5), stats.snapshot()
