"""The mock's Bedrock Runtime routes in-process (Starlette TestClient, no sockets): plans, counts,
validation, faults, stats, and event-stream bodies decoded by botocore's parser."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from botocore.eventstream import EventStreamBuffer
from starlette.testclient import TestClient

from quotagate import tokens
from quotagate_tools.mock import MockSettings, create_app, vocab
from quotagate_tools.mock import bedrock as mb
from quotagate_tools.mock.eventstream import CONTENT_TYPE

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
SETTINGS = MockSettings(token_delay=0)
BODY = {
    "system": [{"text": "You are terse."}],
    "messages": [{"role": "user", "content": [{"text": "What is a token bucket?"}]}],
}
TOOLS = {
    "tools": [
        {
            "toolSpec": {
                "name": "get_weather",
                "inputSchema": {
                    "json": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string"},
                            "unit": {"type": "string", "enum": ["c", "f"]},
                            "days": {"type": "integer"},
                        },
                        "required": ["city", "unit"],
                    }
                },
            }
        }
    ]
}


@pytest.fixture
def app():
    return create_app(SETTINGS)


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


def path(model: str, stream: bool = False) -> str:
    return f"/model/{quote(model, safe='')}/{'converse-stream' if stream else 'converse'}"


def events_of(raw: bytes) -> list[tuple[str, dict]]:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    out = []
    for message in buffer:
        assert message.headers[":message-type"] == "event"
        assert message.headers[":content-type"] == "application/json"
        out.append((message.headers[":event-type"], json.loads(message.payload)))
    return out


# ---------------------------------------------------------------------------------------------
# Plans and counts
# ---------------------------------------------------------------------------------------------


def test_prompt_view_and_input_token_formula():
    body = {
        "system": [{"text": "A"}, {"text": "B"}],
        "messages": [
            {"role": "user", "content": [{"text": "hi"}, {"image": {"format": "png", "source": {"bytes": "AA=="}}}]},
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": "f", "input": {"x": 1}}}]},
            {
                "role": "user",
                "content": [{"toolResult": {"toolUseId": "t", "content": [{"text": "ok"}, {"json": {"v": 2}}]}}],
            },
        ],
        "toolConfig": TOOLS,
    }
    view = mb.prompt_view(body)
    assert view == [
        {"role": "system", "content": "A\nB"},
        {"role": "user", "content": "hi\n[image]"},
        {"role": "assistant", "content": '{"toolUse":{"input":{"x":1},"name":"f","toolUseId":"t"}}'},
        {"role": "user", "content": 'ok\n{"v":2}'},
    ]
    tools_json = json.dumps(TOOLS["tools"], sort_keys=True, separators=(",", ":"))
    assert mb.input_tokens(body) == tokens.chat_prompt_tokens(view) + tokens.count_text(tools_json)


def test_text_plan_is_deterministic_and_counts_tokens():
    plan = mb.plan_converse(MODEL, BODY, SETTINGS, stream=False)
    pieces = vocab.reply_pieces(mb.prompt_view(BODY), SETTINGS.reply_tokens)
    assert plan.text_pieces == pieces and plan.text == "".join(pieces)
    assert plan.output_tokens == tokens.count_text(plan.text) == SETTINGS.reply_tokens
    assert plan.stop_reason == "end_turn"
    assert plan.usage() == {
        "inputTokens": tokens.chat_prompt_tokens(mb.prompt_view(BODY)),
        "outputTokens": 24,
        "totalTokens": plan.input_tokens + 24,
    }


def test_max_tokens_and_stop_sequences():
    limited = mb.plan_converse(MODEL, {**BODY, "inferenceConfig": {"maxTokens": 5}}, SETTINGS, stream=False)
    assert (len(limited.text_pieces), limited.output_tokens, limited.stop_reason) == (5, 5, "max_tokens")
    full = mb.plan_converse(MODEL, BODY, SETTINGS, stream=False)
    stop = full.text_pieces[6]  # " word": cut before it
    cut = mb.plan_converse(MODEL, {**BODY, "inferenceConfig": {"stopSequences": [stop]}}, SETTINGS, stream=False)
    assert cut.stop_reason == "stop_sequence"
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.output_tokens == full.text_pieces.index(stop) + 1
    # A stop sequence spanning two pieces cuts inside the first.
    span = full.text_pieces[2][-2:] + full.text_pieces[3][:2]
    spanning = mb.plan_converse(MODEL, {**BODY, "inferenceConfig": {"stopSequences": [span]}}, SETTINGS, stream=False)
    assert spanning.text == full.text[: full.text.index(span)]
    never = mb.plan_converse(MODEL, {**BODY, "inferenceConfig": {"stopSequences": ["§§"]}}, SETTINGS, stream=False)
    assert never.stop_reason == "end_turn"


def test_tool_plan():
    body = {**BODY, "toolConfig": TOOLS}
    plan = mb.plan_converse(MODEL, body, SETTINGS, stream=True)
    assert plan.stop_reason == "tool_use"
    assert len(plan.text_pieces) == mb.TOOL_PREFACE_TOKENS
    assert plan.tool_use["name"] == "get_weather" and plan.tool_use["toolUseId"].startswith("tooluse_")
    assert set(plan.tool_use["input"]) == {"city", "unit"} and plan.tool_use["input"]["unit"] == "c"
    input_json = json.dumps(plan.tool_use["input"], separators=(",", ":"))
    assert "".join(plan.tool_fragments) == input_json and len(plan.tool_fragments) > 1
    assert plan.output_tokens == mb.TOOL_PREFACE_TOKENS + tokens.count_text(input_json)
    assert plan == mb.plan_converse(MODEL, body, SETTINGS, stream=True)  # deterministic
    # Too few tokens for the call: a truncated preface only.
    short = mb.plan_converse(MODEL, {**body, "inferenceConfig": {"maxTokens": 2}}, SETTINGS, stream=False)
    assert (short.tool_use, short.output_tokens, short.stop_reason) == (None, 2, "max_tokens")
    # After a tool result: a text answer.
    answered = {
        **body,
        "messages": [
            *BODY["messages"],
            {"role": "assistant", "content": [{"toolUse": plan.tool_use}]},
            {
                "role": "user",
                "content": [{"toolResult": {"toolUseId": plan.tool_use["toolUseId"], "content": [{"text": "sunny"}]}}],
            },
        ],
    }
    final = mb.plan_converse(MODEL, answered, SETTINGS, stream=False)
    assert final.tool_use is None and final.stop_reason == "end_turn"


def test_tool_choice_picks_the_named_tool():
    two = {
        "tools": [TOOLS["tools"][0], {"toolSpec": {"name": "noop", "inputSchema": {"json": {}}}}],
        "toolChoice": {"tool": {"name": "noop"}},
    }
    plan = mb.plan_converse(MODEL, {**BODY, "toolConfig": two}, SETTINGS, stream=False)
    assert plan.tool_use["name"] == "noop" and plan.tool_use["input"] == {}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}, "start with a user message"),
        (
            {"messages": [{"role": "user", "content": [{"text": "a"}]}, {"role": "user", "content": [{"text": "b"}]}]},
            "alternate",
        ),
        ({"messages": [{"role": "user", "content": [{"text": "  "}]}]}, "is blank"),
        ({"messages": [{"role": "user", "content": []}]}, "at least one content block"),
        (
            {"messages": [{"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": []}}]}]},
            "toolConfig field must be defined",
        ),
        ({**BODY, "inferenceConfig": {"maxTokens": 0}}, "maxTokens"),
        ({**BODY, "inferenceConfig": {"temperature": 1.5}}, "temperature"),
        ({**BODY, "toolConfig": {"tools": []}}, "toolConfig.tools"),
        ({**BODY, "toolConfig": {**TOOLS, "toolChoice": {"tool": {"name": "nope"}}}}, "toolChoice"),
    ],
)
def test_validation(body, fragment):
    with pytest.raises(mb.BedrockReject) as info:
        mb.plan_converse(MODEL, body, SETTINGS, stream=False)
    assert info.value.status == 400 and info.value.error_type == "ValidationException"
    assert fragment in info.value.message


def test_fault_sources_and_precedence():
    body = {**BODY, "mock_fault": "tokens=3"}
    plan = mb.plan_converse(
        MODEL + "@tokens=9&token_delay=0.5", body, SETTINGS, stream=True, header_fault="tokens=5&omit_usage"
    )
    assert plan.model_id == MODEL
    assert len(plan.text_pieces) == 3 and plan.token_delay == 0.5 and plan.fault.omit_usage
    with pytest.raises(mb.BedrockReject):
        mb.plan_converse(MODEL + "@bogus=1", BODY, SETTINGS, stream=False)


@pytest.mark.parametrize(
    ("spec", "status", "error_type"),
    [
        ("status=429", 429, "ThrottlingException"),
        ("status=500", 500, "InternalServerException"),
        ("status=503", 503, "ServiceUnavailableException"),
        ("status=502", 502, "InternalServerException"),
        ("status=400", 400, "ValidationException"),
        ("status=403", 403, "AccessDeniedException"),
        ("status=429&code=ModelNotReadyException", 429, "ModelNotReadyException"),
    ],
)
def test_injected_errors(spec, status, error_type):
    error = mb.injected_error(mb.parse_fault_spec(spec))
    assert (error.status, error.error_type) == (status, error_type)


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------


def test_converse_route(app, client):
    response = client.post(path(MODEL), json=BODY)
    assert response.status_code == 200, response.text
    data = response.json()
    plan = mb.plan_converse(MODEL, BODY, SETTINGS, stream=False)
    assert data["output"] == {"message": {"role": "assistant", "content": [{"text": plan.text}]}}
    assert data["stopReason"] == "end_turn" and data["usage"] == plan.usage()
    assert "latencyMs" in data["metrics"]
    stats = app.state.stats.snapshot()
    assert stats["completed"] == 1 and stats["prompt_tokens"] == plan.input_tokens
    assert stats["completion_tokens"] == plan.output_tokens
    assert app.state.stats.last_request["model"] == MODEL


def test_converse_stream_route(app, client):
    response = client.post(path(MODEL, stream=True), json=BODY)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    events = events_of(response.content)
    plan = mb.plan_converse(MODEL, BODY, SETTINGS, stream=True)
    names = [name for name, _ in events]
    assert names == ["messageStart", *["contentBlockDelta"] * 24, "contentBlockStop", "messageStop", "metadata"]
    assert "".join(p["delta"]["text"] for n, p in events if n == "contentBlockDelta") == plan.text
    assert events[-2][1] == {"stopReason": "end_turn"}
    assert events[-1][1]["usage"] == plan.usage()
    assert app.state.stats.snapshot()["completed"] == 1


def test_tool_stream_route(client):
    body = {**BODY, "toolConfig": TOOLS}
    events = events_of(client.post(path(MODEL, stream=True), json=body).content)
    starts = [p for n, p in events if n == "contentBlockStart"]
    assert starts == [
        {
            "start": {"toolUse": {"toolUseId": starts[0]["start"]["toolUse"]["toolUseId"], "name": "get_weather"}},
            "contentBlockIndex": 1,
        }
    ]
    fragments = [
        p["delta"]["toolUse"]["input"] for n, p in events if n == "contentBlockDelta" and "toolUse" in p["delta"]
    ]
    assert json.loads("".join(fragments))["unit"] == "c"
    assert ("messageStop", {"stopReason": "tool_use"}) in events


def test_model_id_with_special_characters_survives_the_path(app, client):
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-v1:0"
    assert client.post(path(arn), json=BODY).status_code == 200
    assert app.state.stats.last_request["model"] == arn


def test_error_shapes_and_header_fault(app, client):
    response = client.post(path(MODEL), json=BODY, headers={"x-mock-fault": "status=429&retry_after=3"})
    assert response.status_code == 429
    assert response.headers["x-amzn-errortype"].split(":")[0] == "ThrottlingException"
    assert response.headers["retry-after"] == "3"
    assert "message" in response.json()
    invalid = client.post(path(MODEL), json={"messages": []})
    assert invalid.status_code == 400
    assert invalid.headers["x-amzn-errortype"].startswith("ValidationException")
    not_json = client.post(path(MODEL), content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    assert app.state.stats.snapshot()["error_responses"] == 3


def test_omit_usage_and_body_fault(client):
    body = {**BODY, "mock_fault": {"omit_usage": True}, "mock_reply_tokens": 3}
    events = events_of(client.post(path(MODEL, stream=True), json=body).content)
    assert [n for n, _ in events][-1] == "messageStop"
    data = client.post(path(MODEL), json=body).json()
    assert "usage" not in data and len(data["output"]["message"]["content"][0]["text"].split()) == 3
