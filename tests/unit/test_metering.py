from quotagate import tokens
from quotagate.logic.metering import Meter
from quotagate.providers.base import SSEEvent
from quotagate.providers.openai_compat import parse_sse_events

MESSAGES = [{"role": "user", "content": "Tell me a story about a lighthouse."}]


def chunk(content=None, usage=None, choices=True):
    data = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}}] if choices else [],
        "usage": usage,
    }
    return SSEEvent.from_chunk(data)


def test_provider_usage_wins_and_usage_chunk_is_hidden_unless_asked():
    meter = Meter(MESSAGES)
    assert meter.observe_chunk(chunk(" Once"), client_wants_usage=False)
    usage_chunk = chunk(usage={"prompt_tokens": 11, "completion_tokens": 1}, choices=False)
    assert meter.observe_chunk(usage_chunk, client_wants_usage=False) is False
    assert meter.observe_chunk(usage_chunk, client_wants_usage=True) is True
    usage = meter.usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.source) == (11, 1, "provider")


def test_without_provider_usage_tiktoken_counts_what_was_received():
    meter = Meter(MESSAGES)
    for piece in [" Once", " upon", " a", " time"]:
        meter.observe_chunk(chunk(piece), client_wants_usage=False)
    usage = meter.usage()
    assert usage.source == "counted"
    assert usage.prompt_tokens == tokens.chat_prompt_tokens(MESSAGES)
    assert usage.completion_tokens == tokens.count_text(" Once upon a time") == 4


def test_nothing_is_charged_when_upstream_never_started():
    usage = Meter(MESSAGES).usage(upstream_started=False)
    assert (usage.prompt_tokens, usage.completion_tokens) == (0, 0)


def test_sse_parser_keeps_partial_events_and_accepts_crlf():
    buffer = bytearray(b'data: {"a": 1}\n\n: ping\n\ndata: [DONE]\r\n\r\ndata: {"b"')
    events = parse_sse_events(buffer)
    assert [e.data for e in events] == [{"a": 1}, None, None]
    assert events[2].done
    assert bytes(buffer) == b'data: {"b"'
    buffer.extend(b": 2}\n\n")
    assert parse_sse_events(buffer)[0].data == {"b": 2}


def test_huge_prompt_estimate_is_an_upper_bound_without_encoding():
    text = "word " * 30_000  # 150k chars: above the exact-count threshold
    assert tokens.upper_bound_text(text) >= tokens.count_text(text)
    assert tokens.upper_bound_text(text) == len(text.encode())
