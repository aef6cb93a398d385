"""The mock's Anthropic Messages endpoint in-process (Starlette TestClient): shapes, usage, faults."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from quotagate import tokens
from quotagate_tools.mock import MockSettings, StreamCut, create_app, reply_pieces, reply_text
from quotagate_tools.mock.anthropic import conversation, input_tokens_of

HEADERS = {"anthropic-version": "2023-06-01"}
SYSTEM = "You are terse."
MESSAGES = [{"role": "user", "content": "What is a token bucket?"}]
CONVERSATION = [{"role": "system", "content": SYSTEM}, *MESSAGES]
TOOL = {
    "name": "get_weather",
    "description": "Weather",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["C", "F"]}},
    },
}


def post(client, headers=None, **body):
    body.setdefault("model", "claude-mock")
    body.setdefault("max_tokens", 100)
    body.setdefault("system", SYSTEM)
    body.setdefault("messages", MESSAGES)
    return client.post("/v1/messages", json=body, headers={**HEADERS, **(headers or {})})


def sse(text: str) -> list[tuple[str, dict]]:
    """(event name, data) pairs; checks that every event names its data's type."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), block
        data = json.loads(data_line[len("data: ") :])
        assert data["type"] == name_line[len("event: ") :]
        events.append((data["type"], data))
    return events


def test_input_tokens_formula():
    assert conversation({"system": SYSTEM, "messages": MESSAGES}) == CONVERSATION
    assert conversation({"messages": MESSAGES}) == MESSAGES
    assert input_tokens_of({"system": SYSTEM, "messages": MESSAGES}) == tokens.chat_prompt_tokens(CONVERSATION)


def test_non_stream_shape_and_usage(client, app):
    r = post(client)
    assert r.status_code == 200
    assert r.headers["request-id"].startswith("req_")
    body = r.json()
    assert body["type"] == "message" and body["role"] == "assistant" and body["model"] == "claude-mock"
    assert body["id"].startswith("msg_")
    assert body["content"] == [{"type": "text", "text": reply_text(CONVERSATION, 24)}]
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    assert body["usage"]["input_tokens"] == tokens.chat_prompt_tokens(CONVERSATION)
    assert body["usage"]["output_tokens"] == 24
    stats = app.state.stats.snapshot()
    assert stats["chat_requests"] == 1 and stats["completed"] == 1
    assert stats["prompt_tokens"] == body["usage"]["input_tokens"] and stats["completion_tokens"] == 24


def test_stream_event_sequence(client, app):
    r = post(client, stream=True, mock_reply_tokens=3)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == tokens.chat_prompt_tokens(CONVERSATION)
    assert start["usage"]["output_tokens"] == 1
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    texts = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]
    assert texts == reply_pieces(CONVERSATION, 3)
    assert events[7][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 3},
    }
    assert app.state.stats.snapshot()["completed"] == 1


def test_max_tokens_truncates(client):
    body = post(client, max_tokens=5).json()
    assert body["stop_reason"] == "max_tokens"
    assert body["content"][0]["text"] == reply_text(CONVERSATION, 5)
    assert body["usage"]["output_tokens"] == 5


def test_stop_sequence(client):
    pieces = reply_pieces(CONVERSATION, 24)
    stop = pieces[5]  # " word": the reply stops at its first occurrence
    text = "".join(pieces)
    body = post(client, stop_sequences=["never-in-the-reply", stop]).json()
    assert body["stop_reason"] == "stop_sequence" and body["stop_sequence"] == stop
    assert body["content"][0]["text"] == text[: text.find(stop)]


def test_tool_choice_any_gives_one_tool_use(client):
    body = post(client, tools=[TOOL], tool_choice={"type": "any"}).json()
    assert body["stop_reason"] == "tool_use"
    [block] = body["content"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather" and block["id"].startswith("toolu_")
    assert set(block["input"]) == {"city", "days", "unit"} and block["input"]["unit"] in ("C", "F")
    json_text = json.dumps(block["input"], separators=(",", ":"), ensure_ascii=False)
    assert body["usage"]["output_tokens"] == tokens.count_text(json_text)


def test_tool_choice_auto_text_then_tool_then_answer(client):
    body = post(client, tools=[TOOL]).json()
    assert [b["type"] for b in body["content"]] == ["text", "tool_use"]
    call = body["content"][1]
    follow_up = [
        *MESSAGES,
        {"role": "assistant", "content": body["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "18C"}]},
    ]
    answer = post(client, tools=[TOOL], messages=follow_up).json()
    assert answer["stop_reason"] == "end_turn" and [b["type"] for b in answer["content"]] == ["text"]


def test_streamed_tool_use(client):
    events = sse(post(client, stream=True, tools=[TOOL], tool_choice={"type": "tool", "name": "get_weather"}).text)
    start = next(data for name, data in events if name == "content_block_start")
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["input"] == {}
    pieces = [data["delta"]["partial_json"] for name, data in events if name == "content_block_delta"]
    assert pieces[0] == ""  # Anthropic opens tool input with an empty piece
    arguments = json.loads("".join(pieces))
    assert set(arguments) == {"city", "days", "unit"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("headers", "status", "error_type"),
    [
        ({"anthropic-version": ""}, 400, "invalid_request_error"),
        ({"anthropic-version": "1999-01-01"}, 400, "invalid_request_error"),
    ],
)
def test_version_header_required(client, headers, status, error_type):
    r = post(client, headers=headers)
    assert r.status_code == status
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == error_type


def test_api_key_required_as_x_api_key():
    app = create_app(MockSettings(token_delay=0, api_key="sk-ant-test"))
    with TestClient(app) as client:
        assert post(client).status_code == 401
        assert (
            post(client, headers={"authorization": "Bearer sk-ant-test"}).json()["error"]["type"]
            == "authentication_error"
        )
        assert post(client, headers={"x-api-key": "sk-ant-test"}).status_code == 200
        recorded = app.state.stats.last_request["headers"]
        assert recorded["x-api-key"] == "<redacted>"


@pytest.mark.parametrize(
    "body",
    [
        {"max_tokens": None},
        {"messages": []},
        {"messages": [{"role": "system", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
        {"stop_sequences": [" "]},
        {"temperature": 1.5},
        {"tool_choice": {"type": "tool", "name": "missing"}},
    ],
)
def test_validation(client, body):
    if body.get("max_tokens", 1) is None:
        r = client.post("/v1/messages", headers=HEADERS, json={"model": "m", "messages": MESSAGES})
    else:
        r = post(client, **body)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("status", "error_type", "retry_after"),
    [
        (400, "invalid_request_error", None),
        (401, "authentication_error", None),
        (429, "rate_limit_error", "1"),
        (500, "api_error", None),
        (529, "overloaded_error", "1"),
    ],
)
def test_injected_status(client, app, status, error_type, retry_after):
    r = post(client, model=f"claude-mock@status={status}")
    assert r.status_code == status
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == error_type
    assert r.headers.get("retry-after") == retry_after
    assert app.state.stats.snapshot()["error_responses"] == 1


def test_fault_sources(client):
    assert post(client, headers={"x-mock-fault": "status=503"}).status_code == 503
    assert post(client, mock_fault={"status": 429, "retry_after": 7}).headers["retry-after"] == "7"
    assert post(client, mock_fault="code=overloaded_error&status=503").json()["error"]["type"] == "overloaded_error"
    assert post(client, mock_fault="nonsense=1").status_code == 400


def test_omit_usage(client):
    body = post(client, mock_fault="omit_usage").json()
    assert "usage" not in body
    events = sse(post(client, stream=True, mock_fault="omit_usage").text)
    assert "usage" not in events[0][1]["message"]
    delta = next(data for name, data in events if name == "message_delta")
    assert "usage" not in delta and delta["delta"]["stop_reason"] == "end_turn"


def test_drop_after_cuts_the_stream(app):
    with TestClient(app) as client, pytest.raises(StreamCut):
        post(client, stream=True, mock_fault="drop_after=2")
    assert app.state.stats.snapshot()["streams_cut"] == 1


def test_count_tokens(client):
    r = client.post(
        "/v1/messages/count_tokens",
        headers=HEADERS,
        json={"model": "claude-mock", "system": SYSTEM, "messages": MESSAGES},
    )
    assert r.json() == {"input_tokens": tokens.chat_prompt_tokens(CONVERSATION)}


# -- extended thinking and prompt caching, as Anthropic bills them -------------------------------

THINKING = {"type": "enabled", "budget_tokens": 1024}


def test_thinking_comes_first_with_a_signature_and_is_billed_as_output(client):
    from quotagate_tools.mock.anthropic import THINKING_TOKENS, thinking_signature

    body = post(client, max_tokens=2000, thinking=THINKING, mock_reply_tokens=4).json()
    thinking, text = body["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"]
    assert thinking["signature"] == thinking_signature(thinking["thinking"])
    assert text == {"type": "text", "text": reply_text(CONVERSATION, 4)}
    assert tokens.count_text(thinking["thinking"]) == THINKING_TOKENS
    assert body["usage"]["output_tokens"] == THINKING_TOKENS + 4


def test_streamed_thinking_has_thinking_and_signature_deltas(client):
    from quotagate_tools.mock.anthropic import THINKING_TOKENS, thinking_signature

    events = sse(post(client, max_tokens=2000, thinking=THINKING, stream=True, mock_reply_tokens=2).text)
    assert events[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    deltas = [data["delta"] for name, data in events if name == "content_block_delta" and data["index"] == 0]
    assert [d["type"] for d in deltas] == ["thinking_delta"] * THINKING_TOKENS + ["signature_delta"]
    thought = "".join(d["thinking"] for d in deltas[:-1])
    assert deltas[-1]["signature"] == thinking_signature(thought)
    assert events[-2][1]["usage"]["output_tokens"] == THINKING_TOKENS + 2


def test_a_thinking_block_sent_back_must_carry_its_signature(client):
    first = post(client, max_tokens=2000, thinking=THINKING, mock_reply_tokens=2).json()
    turns = [*MESSAGES, {"role": "assistant", "content": first["content"]}, {"role": "user", "content": "More."}]
    assert post(client, max_tokens=2000, thinking=THINKING, messages=turns).status_code == 200
    forged = [{**first["content"][0], "signature": "forged"}, first["content"][1]]
    turns[1] = {"role": "assistant", "content": forged}
    r = post(client, max_tokens=2000, thinking=THINKING, messages=turns)
    assert r.status_code == 400 and "signature" in r.json()["error"]["message"]


@pytest.mark.parametrize("thinking", [{"type": "enabled", "budget_tokens": 1000}, {"type": "enabled"}])
def test_thinking_budget_is_checked(client, thinking):
    assert post(client, max_tokens=2000, thinking=thinking).status_code == 400
    assert post(client, max_tokens=1024, thinking=THINKING).status_code == 400  # budget >= max_tokens


def test_prompt_cache_writes_then_reads_the_marked_prefix(client):
    marked = {"type": "text", "text": "A long policy about lighthouses. " * 30, "cache_control": {"type": "ephemeral"}}
    turns = [{"role": "user", "content": [marked, {"type": "text", "text": "Why?"}]}]
    first = post(client, messages=turns, mock_reply_tokens=2).json()["usage"]
    second = post(client, messages=turns, mock_reply_tokens=2).json()["usage"]
    written = first["cache_creation_input_tokens"]
    assert written > 100 and first["cache_read_input_tokens"] == 0
    assert first["cache_creation"] == {"ephemeral_5m_input_tokens": written, "ephemeral_1h_input_tokens": 0}
    assert second["cache_read_input_tokens"] == written and second["cache_creation_input_tokens"] == 0
    assert first["input_tokens"] == second["input_tokens"] > 0  # the unmarked rest is billed as input
    total = tokens.chat_prompt_tokens([{"role": "system", "content": SYSTEM}, *turns])
    assert first["input_tokens"] + written == total
    # Another prompt after the same marked prefix reads it too.
    other = [{"role": "user", "content": [marked, {"type": "text", "text": "How?"}]}]
    assert post(client, messages=other).json()["usage"]["cache_read_input_tokens"] == written
