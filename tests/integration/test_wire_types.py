"""Wrong types at depth through the whole local gateway (emulator, authorizer, real proxy, moto, mock
model): a JSON array or object where the protocol wants a string is a 400 in the caller's protocol that
names the path, costs nothing and reaches no model — never a 500 (issue 16: nine such bodies gave
``internal_error``)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.gateway_stack import gateway_stack, mock_providers

pytestmark = pytest.mark.timeout(120)

CONFIG = {
    "providers": mock_providers(),
    "models": {
        "via-openai": {"provider": "openai", "upstream_model": "mock-gpt"},
        "via-anthropic": {"provider": "anthropic", "upstream_model": "claude-mock"},
        "via-bedrock": {"provider": "bedrock", "upstream_model": "amazon.nova-mock-v1:0"},
        "strict-openai": {"provider": "openai", "upstream_model": "mock-gpt", "unknown_fields": "refuse"},
    },
    "plans": {"pro": {"limits": {"tokens_per_day": 100000}, "models": "*", "default_max_tokens": 16}},
    "default_plan": "pro",
}
HI = {"role": "user", "content": "hi"}
TOOL = {"name": "f", "input_schema": {"type": "object"}}

# (path, body, the path the error must name); each gave 500 internal_error before.
WRONG_TYPES = {
    "messages role []": (
        "/v1/messages",
        {"model": "via-anthropic", "max_tokens": 8, "messages": [{"role": [], "content": "hi"}]},
        "messages.0.role",
    ),
    "messages role {}": (
        "/v1/messages",
        {"model": "via-openai", "max_tokens": 8, "messages": [{"role": {}, "content": "hi"}]},
        "messages.0.role",
    ),
    "count_tokens role []": (
        "/v1/messages/count_tokens",
        {"model": "via-anthropic", "messages": [{"role": [], "content": "hi"}]},
        "messages.0.role",
    ),
    "count_tokens role {}": (
        "/v1/messages/count_tokens",
        {"model": "via-anthropic", "messages": [{"role": {}, "content": "hi"}]},
        "messages.0.role",
    ),
    "thinking type []": (
        "/v1/messages",
        {"model": "via-anthropic", "max_tokens": 8, "messages": [HI], "thinking": {"type": []}},
        "thinking.type",
    ),
    "tool_choice name []": (
        "/v1/messages",
        {
            "model": "via-anthropic",
            "max_tokens": 8,
            "messages": [HI],
            "tools": [TOOL],
            "tool_choice": {"type": "tool", "name": []},
        },
        "tool_choice.name",
    ),
    "chat content type []": (
        "/v1/chat/completions",
        {"model": "via-openai", "messages": [{"role": "user", "content": [{"type": [], "text": "hi"}]}]},
        "messages[0].content[0].type",
    ),
    "chat content type [] streamed": (
        "/v1/chat/completions",
        {
            "model": "via-openai",
            "stream": True,
            "messages": [{"role": "user", "content": [{"type": [], "text": "hi"}]}],
        },
        "messages[0].content[0].type",
    ),
    "responses input role []": (
        "/v1/responses",
        {"model": "via-openai", "input": [{"role": [], "content": "hi"}]},
        "input[0].role",
    ),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("wire-types"), CONFIG, token_delay=0.0) as running:
        yield running


@pytest.fixture(scope="module")
def api_key(stack):
    return stack.create_key(tenant="wire-types", plan="pro")["api_key"]


def upstream_calls(stack) -> int:
    return sum(count for name, count in stack.mock.stats.snapshot().items() if name.endswith("_requests"))


@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_a_wrong_type_at_depth_is_a_400_naming_its_path(stack, api_key, case):
    path, body, where = WRONG_TYPES[case]
    calls = upstream_calls(stack)
    response = httpx.post(
        f"{stack.base_url}{path}",
        content=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, (response.status_code, response.text)
    error = response.json()
    if path.startswith("/v1/messages"):
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
        assert error["error"]["message"].startswith(f"{where}:"), error
    else:
        assert error["error"]["param"] == where, error
        assert where in error["error"]["message"], error
    assert upstream_calls(stack) == calls


def post(stack, api_key, path, body, **headers):
    return httpx.post(
        f"{stack.base_url}{path}",
        content=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json", **headers},
        timeout=30,
    )


def claude_code_like(model: str) -> dict:
    """What Claude Code 2.1 sends every run (abridged): context_management, a mid-conversation
    system turn, a tool with eager_input_streaming (the AI SDK), and a field no one declared."""
    return {
        "model": model,
        "max_tokens": 16,
        "system": [{"type": "text", "text": "You are a coding agent."}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "system", "content": "The user switched to plan mode."},
            {"role": "user", "content": [{"type": "text", "text": "say hi", "cache_control": {"type": "ephemeral"}}]},
        ],
        "tools": [{**TOOL, "eager_input_streaming": True}],
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
        "brand_new_field": {"x": 1},
    }


BETAS = "claude-code-20250219,context-management-2025-06-27,interleaved-thinking-2025-05-14,some-future-beta-2027-01-01"


@pytest.mark.parametrize("model", ["via-anthropic", "via-openai", "via-bedrock"])
def test_claude_codes_request_works_on_every_target_and_names_what_was_dropped(stack, api_key, model):
    response = post(stack, api_key, "/v1/messages", claude_code_like(model), **{"anthropic-beta": BETAS})
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message"
    assert response.headers["x-quotagate-dropped-params"] == "brand_new_field"
    assert response.headers["x-quotagate-dropped-betas"] == "some-future-beta-2027-01-01"
    sent = stack.mock.stats.last_request
    assert "brand_new_field" not in sent["body"]
    if model == "via-anthropic":
        assert sent["headers"]["anthropic-beta"] == (
            "claude-code-20250219,context-management-2025-06-27,interleaved-thinking-2025-05-14"
        )
        assert sent["body"]["context_management"] == {"edits": [{"type": "clear_tool_uses_20250919"}]}
        assert sent["body"]["tools"][0]["eager_input_streaming"] is True
        # The system turn joined the next user turn; the turns before it are unchanged (cache prefix).
        assert [m["role"] for m in sent["body"]["messages"]] == ["user", "assistant", "user"]
        assert sent["body"]["messages"][2]["content"][0] == {"type": "text", "text": "The user switched to plan mode."}
        assert sent["body"]["system"] == [{"type": "text", "text": "You are a coding agent."}]
    else:
        assert "anthropic-beta" not in sent["headers"]
        assert "context_management" not in json.dumps(sent["body"])
        assert "eager_input_streaming" not in json.dumps(sent["body"])
        assert "The user switched to plan mode." in json.dumps(sent["body"])


def test_a_price_changing_field_not_yet_priced_is_refused_naming_it(stack, api_key):
    # via-anthropic's price table has no fast_mode: fast mode would be billed at a premium it lacks.
    body = {"model": "via-anthropic", "max_tokens": 8, "messages": [HI], "speed": "fast"}
    response = post(stack, api_key, "/v1/messages", body)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "'speed' asks for fast mode" in message and "does not carry it" in message


CODEX_DEFAULT = {
    "instructions": "You are Codex.",
    "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "say hi"}]}],
    "tools": [
        {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}, "strict": False},
        {
            "type": "namespace",
            "name": "mcp__files",
            "description": "File tools.",
            "tools": [{"type": "function", "name": "read", "parameters": {"type": "object", "properties": {}}}],
        },
        {"type": "web_search", "external_web_access": False},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": None,
    "store": False,
    "stream": True,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "019a-session",
    "text": {"verbosity": "medium"},
    "client_metadata": {"x-codex-turn-metadata": "{}"},
}


@pytest.mark.parametrize("model", ["via-openai", "via-anthropic", "via-bedrock"])
def test_codexs_default_request_streams_on_every_target(stack, api_key, model):
    response = post(stack, api_key, "/v1/responses", {"model": model, **CODEX_DEFAULT})
    assert response.status_code == 200, response.text
    assert '"type":"response.completed"' in response.text.replace(" ", "")
    assert response.headers["x-quotagate-dropped-params"] == (
        "store, include, prompt_cache_key, client_metadata, tools[2]"
    )
    sent = json.dumps(stack.mock.stats.last_request["body"])
    assert "mcp__files__read" in sent and "web_search" not in sent and "client_metadata" not in sent


@pytest.mark.parametrize("stream", [False, True])
def test_chat_drops_undeclared_fields_names_them_and_never_forwards_them(stack, api_key, stream):
    body = {
        "model": "via-openai",
        "messages": [{"role": "user", "content": "hi", "x_trace": 1}],
        "max_tokens": 4,
        "stream": stream,
        "repetition_penalty": 1.1,
        "store": True,
    }
    response = post(stack, api_key, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.headers["x-quotagate-dropped-params"] == "repetition_penalty, messages[0].x_trace, store"
    sent = stack.mock.stats.last_request["body"]
    assert "repetition_penalty" not in sent and "store" not in sent and "x_trace" not in sent["messages"][0]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [HI], "repetition_penalty": 1.1}, "repetition_penalty"),
        ("/v1/responses", {"input": "hi", "client_metadata": {}, "future": 1}, "future"),
        ("/v1/embeddings", {"input": "hi", "future": 1}, "future"),
    ],
)
def test_a_model_configured_to_refuse_unknown_fields_refuses_them(stack, api_key, path, body, param):
    calls = upstream_calls(stack)
    response = post(stack, api_key, path, {"model": "strict-openai", **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert upstream_calls(stack) == calls


@pytest.fixture
def info_logs(caplog):
    from quotagate.observability import logger

    level = logger.log_level
    logger.setLevel("INFO")  # the tests run at WARNING
    yield caplog
    logger.setLevel(level)


def test_what_was_dropped_is_logged_with_the_request_id(stack, api_key, info_logs):
    body = {"model": "via-openai", "messages": [HI], "max_tokens": 4, "brand_new_field": 1}
    response = post(stack, api_key, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    lines = [record.__dict__ for record in info_logs.records if record.getMessage() == "request fields dropped"]
    assert [line["x-quotagate-dropped-params"] for line in lines] == ["brand_new_field"]
    assert lines[0]["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("stream", [False, True])
def test_several_choices_where_no_target_returns_them_are_refused_before_anything_is_reserved(stack, api_key, stream):
    """Found by the declared-field fuzz (QG_FUZZ_ROUNDS=3): n: 7 on a Bedrock model was a 400 from
    the translation after the reservation, which wrote to the quota table."""
    from quotagate import tables
    from tests.integration.refusal_counts import scan_but_request_counts as scan

    before, calls = scan(tables.QUOTA, tables.CIRCUIT), upstream_calls(stack)
    body = {"model": "via-bedrock", "messages": [HI], "max_tokens": 4, "n": 7, "stream": stream}
    response = post(stack, api_key, "/v1/chat/completions", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "n"
    assert scan(tables.QUOTA, tables.CIRCUIT) == before and upstream_calls(stack) == calls
