"""An Anthropic target's own Messages stream, read for a Messages client: metering per event, the
assembled message, the usage the target reported, and the closing events of a cut answer."""

from __future__ import annotations

import json

from quotagate import tokens
from quotagate.logic.metering import Usage
from quotagate.protocols.messages_native import NativeMessage, output_tokens_of, usage_numbers

START_USAGE = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 40,
    "cache_creation": {"ephemeral_5m_input_tokens": 70, "ephemeral_1h_input_tokens": 30},
    "output_tokens": 1,
    "service_tier": "standard",
}
EVENTS = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": START_USAGE,
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me think"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": " hard."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "c2ln"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": "ZW5j"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Checking."}},
    {"type": "content_block_stop", "index": 2},
    {
        "type": "content_block_start",
        "index": 3,
        "content_block": {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}},
    },
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": '"Lyon"}'}},
    {"type": "content_block_stop", "index": 3},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 57},
    },
    {"type": "message_stop"},
]


def fed(events) -> NativeMessage:
    native = NativeMessage("claude-x")
    for event in events:
        native.feed(event)
    return native


def parse(raw: bytes) -> dict:
    name, data = raw.decode().rstrip("\n").split("\n")
    event = json.loads(data.removeprefix("data: "))
    assert name == f"event: {event['type']}"
    return event


def test_the_assembled_message_keeps_thinking_signatures_tool_ids_and_the_targets_usage():
    native = fed(EVENTS)
    message = native.message(native.usage)
    assert message["id"] == "msg_1" and message["model"] == "claude-x"
    assert message["content"] == [
        {"type": "thinking", "thinking": "Let me think hard.", "signature": "c2ln"},
        {"type": "redacted_thinking", "data": "ZW5j"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Lyon"}},
    ]
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    assert message["usage"] == {**START_USAGE, "output_tokens": 57}


def test_usage_counts_cache_reads_and_writes_as_prompt_tokens():
    # The tier Anthropic reports is the tier settled (quotagate.logic.pricing).
    assert fed(EVENTS).usage == Usage(12 + 100 + 40, 57, "provider", 40, 100, 30, service_tier="standard")
    assert fed(EVENTS[:-2]).usage is None  # no final output count yet
    assert fed(EVENTS[:3]).reported_input == Usage(152, 0, "provider", 40, 100, 30, service_tier="standard")
    assert usage_numbers({"input_tokens": 3}) is None


def test_output_tokens_count_text_thinking_and_tool_input_but_not_signatures():
    counted = [output_tokens_of(event) for event in EVENTS]
    assert counted[2] == tokens.count_text("Let me think") and counted[3] >= 1
    assert counted[4] == 0  # the signature is not output text
    assert counted[9] >= 1 and counted[12] == 0 and counted[13] >= 1
    assert sum(counted[i] for i in (0, 1, 5, 6, 7, 8, 10, 11, 15, 16, 17)) == 0


def test_a_cut_closes_open_blocks_and_reports_max_tokens_with_the_settled_usage():
    native = fed(EVENTS[:10])  # inside the text block
    settled = Usage(152, 9, "counted", 40, 100, 30)
    events = [parse(raw) for raw in native.cut_events(settled)]
    assert events == [
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {**START_USAGE, "output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    message = fed(EVENTS[:14]).message(settled, cut=True)
    assert message["stop_reason"] == "max_tokens"
    assert message["content"][-1] == {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}


def test_an_anthropic_targets_answer_is_admitted_and_settled_as_one_count():
    """Deltas of ``"w "`` are 2 tokens each alone and 1 inside the answer: the budget admits, and a
    stream without a final usage settles, the count of the whole text (issue 17, one count)."""
    from quotagate.protocols.messages_dialect import NativeDialect
    from quotagate.providers.base import SSEEvent

    dialect = NativeDialect("claude-test", prompt_estimate=10)
    start = {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 10, "output_tokens": 1}}}
    dialect.accept(SSEEvent(b"", start))
    admitted = 0
    for _ in range(1500):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "w "}}
        event = SSEEvent(b"", delta)
        admitted += dialect.output_tokens(event)
        dialect.accept(event)
    assert admitted == dialect.usage().completion_tokens == tokens.count_text("w " * 1500)
