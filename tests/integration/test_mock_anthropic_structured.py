"""The mock Anthropic upstream honours ``output_config.format`` (json_schema) as the real API does: the
text block is JSON that the schema accepts (langchain-anthropic's ``with_structured_output(method=
"json_schema")`` on mock-claude got prose back). Driven through the anthropic SDK, against the mock."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anthropic
import pytest

from quotagate_tools.mock import MockServer, MockSettings

if TYPE_CHECKING:
    from collections.abc import Iterator

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "kind": {"enum": ["cat", "dog"]},
    },
    "required": ["name", "age", "tags", "kind"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Describe a pet as JSON."}]


@pytest.fixture(scope="module")
def client() -> Iterator[anthropic.Anthropic]:
    mock = MockServer(MockSettings(token_delay=0.0)).start()
    try:
        yield anthropic.Anthropic(
            base_url=mock.base_url.rstrip("/"),
            api_key="mock",
            max_retries=0,
            default_headers={"anthropic-version": "2023-06-01"},  # the versions the mock knows
        )
    finally:
        mock.stop()


def check(value: dict) -> None:
    assert set(value) == {"name", "age", "tags", "kind"}
    assert isinstance(value["name"], str) and isinstance(value["age"], int) and value["age"] >= 0
    assert value["tags"] and all(isinstance(tag, str) for tag in value["tags"])
    assert value["kind"] in ("cat", "dog")


def test_output_config_format_gives_json_the_schema_accepts(client):
    message = client.messages.create(
        model="mock-claude",
        max_tokens=400,
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
    )
    assert [block.type for block in message.content] == ["text"]
    check(json.loads(message.content[0].text))  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"


def test_streamed_output_config_format_is_the_same_json(client):
    body = {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}
    with client.messages.stream(model="mock-claude", max_tokens=400, messages=MESSAGES, extra_body=body) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    check(json.loads(text))
    assert final.usage.output_tokens > 0


def test_a_cap_too_small_cuts_the_json_at_max_tokens(client):
    message = client.messages.create(
        model="mock-claude",
        max_tokens=3,
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_a_malformed_format_is_a_400(client):
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model="mock-claude",
            max_tokens=50,
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_body={"output_config": {"format": {"type": "json_schema", "schema": "not a schema"}}},
        )
