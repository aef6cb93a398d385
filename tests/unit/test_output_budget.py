"""Output metering: one running count of the answer, and a cut only where the reservation ends."""

from __future__ import annotations

from quotagate import tokens
from quotagate.logic.assemble import CompletionAssembler
from quotagate.logic.metering import Meter, RunningCount, chunk_text
from quotagate.logic.output_budget import OutputBudget


def chunk(text, index=0):
    return {
        "id": "c",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}],
    }


def test_chunk_text_reads_every_choice_and_tool_arguments():
    assert chunk_text(chunk("")) == ""
    assert chunk_text(chunk(" hello")) == " hello"
    calls = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1}'}}]}}]}
    assert chunk_text(calls) == '{"a": 1}'


def test_the_meter_admits_what_the_settlement_counts():
    """Each ``"w "`` delta alone is 2 tokens, but 1 inside the answer: the budget's count, the cut
    and the settled count are one count of the whole text (issue 17)."""
    from quotagate.providers.base import SSEEvent

    meter = Meter([{"role": "user", "content": "hi"}])
    admitted = 0
    for _ in range(1500):
        event = SSEEvent.from_chunk(chunk("w "))
        admitted += meter.output_tokens(event.data)
        meter.observe_chunk(event, client_wants_usage=False)
    settled = meter.usage().completion_tokens
    assert admitted == settled == tokens.count_text("w " * 1500)


def test_a_running_count_is_the_count_of_the_whole_text():
    pieces = ["Hé", "llo", " wor", "ld", "! ", "😀", "😀 ", "a" * 300, " b", "\n\n", " c" * 200, "ünï", "cödé"]
    running, text = RunningCount(), ""
    for piece in pieces * 3:
        grow = running.peek(piece)
        running.add(piece)
        text += piece
        assert grow >= 0
        assert running.total == tokens.count_text(text)


def test_the_safety_factor_applies_to_the_total_and_the_reservation_stops_a_deaf_provider():
    budget = OutputBudget(reserved=13, factor=1.3)
    admitted = 0
    while budget.admit(1):
        admitted += 1
    assert admitted == 10  # ceil(10 * 1.3) = 13; one-token deltas are not each rounded up to 2
    assert budget.counted == 13


def test_the_assembled_answer_merges_choices_tool_calls_and_marks_a_cut():
    answer = CompletionAssembler()
    answer.feed({**chunk("Hel"), "system_fingerprint": "fp"})
    answer.feed(chunk("lo"))
    answer.feed(chunk("Other", 1))
    answer.feed({"choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]})
    answer.feed(
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"a"'},
                            }
                        ]
                    },
                }
            ]
        }
    )
    answer.feed({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]})
    answer.feed({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
    result = answer.result(cut=True)
    first, second = result["choices"]
    assert first["message"]["content"] == "Hello" and first["finish_reason"] == "length"
    assert first["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]
    assert second["message"]["content"] == "Other" and second["finish_reason"] == "stop"
    assert result["object"] == "chat.completion" and result["usage"]["total_tokens"] == 7
    assert result["system_fingerprint"] == "fp"


def test_the_assembled_answer_keeps_the_stop_sequence_a_target_named():
    """vLLM's ``choices[].stop_reason`` (the Anthropic adapter sets it too): a Messages client is
    told ``stop_sequence`` from it, streamed or not."""
    answer = CompletionAssembler()
    answer.feed(chunk("Hel"))
    answer.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "lo"}]})
    assert answer.result()["choices"][0]["stop_reason"] == "lo"
    plain = CompletionAssembler()
    plain.feed(chunk("Hi"))
    assert "stop_reason" not in plain.result()["choices"][0]
