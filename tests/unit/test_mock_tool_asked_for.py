"""The mock calls the tool the prompt names (how a coding agent's round trip is made to happen: its
tool list starts with tools it cannot run from a prompt), on all three dialects; else the first tool."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from quotagate_tools.mock import MockSettings, create_app
from quotagate_tools.mock.structured import tool_asked_for

SCHEMA = {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}
NAMES = ["DeferredToolPlaceholder", "Bash", "Read"]


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(MockSettings(token_delay=0.0))) as running:
        yield running


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Read the file notes.txt", 2), ("please run bash", 1), ("hello", 0), ("Reading is fun", 0)],
)
def test_tool_asked_for(text, expected):
    assert tool_asked_for(NAMES, [{"role": "user", "content": [{"type": "text", "text": text}]}]) == expected


def test_anthropic_dialect_calls_the_named_tool(client):
    body = {
        "model": "claude-mock",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Say hi, then read the file notes.txt."}],
        "tools": [{"name": name, "input_schema": SCHEMA} for name in NAMES],
    }
    answer = client.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}).json()
    assert [b["name"] for b in answer["content"] if b["type"] == "tool_use"] == ["Read"]


def test_openai_dialect_calls_the_named_tool(client):
    body = {
        "model": "mock-gpt",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Say hi, then read the file notes.txt."}],
        "tools": [{"type": "function", "function": {"name": name, "parameters": SCHEMA}} for name in NAMES],
    }
    answer = client.post("/v1/chat/completions", json=body).json()
    assert [c["function"]["name"] for c in answer["choices"][0]["message"]["tool_calls"]] == ["Read"]


def test_bedrock_dialect_calls_the_named_tool(client):
    body = {
        "messages": [{"role": "user", "content": [{"text": "Say hi, then read the file notes.txt."}]}],
        "inferenceConfig": {"maxTokens": 200},
        "toolConfig": {"tools": [{"toolSpec": {"name": n, "inputSchema": {"json": SCHEMA}}} for n in NAMES]},
    }
    answer = client.post(f"/model/{quote('amazon.nova-mock-v1:0', safe='')}/converse", json=body).json()
    blocks = answer["output"]["message"]["content"]
    assert [b["toolUse"]["name"] for b in blocks if "toolUse" in b] == ["Read"]
