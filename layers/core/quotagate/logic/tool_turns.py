"""One rule for tool results, whatever the target.

A ``tool`` message answers a call of the assistant message before it (only ``tool`` messages may
come between), and every call of an assistant message is answered before the conversation goes on
(a final assistant message may leave its calls open: the client is about to run them). OpenAI,
Anthropic and Bedrock each refuse a conversation that breaks this, each in its own words; checked
here, it is the same 400 ``invalid_value`` on every target, and it never reaches one (nor counts
against its circuit breaker).
"""

from __future__ import annotations

from typing import Any

from quotagate.errors import invalid_request


def _call_ids(message: dict[str, Any]) -> list[str]:
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return []
    return [call["id"] for call in calls if isinstance(call, dict) and isinstance(call.get("id"), str)]


def check_tool_turns(messages: list[dict[str, Any]]) -> None:
    """400 for a tool message that answers no open call, or an assistant's call left unanswered."""
    open_calls: list[str] | None = None  # the unanswered calls of the assistant message just before
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if open_calls is None or not isinstance(call_id, str) or call_id not in open_calls:
                raise invalid_request(
                    f"'{where}' is a tool message, but its tool_call_id {call_id!r} answers no unanswered tool "
                    "call of the assistant message before it.",
                    param=f"{where}.tool_call_id",
                    code="invalid_value",
                )
            open_calls.remove(call_id)
            continue
        if open_calls:
            raise invalid_request(
                f"The assistant's tool calls {open_calls} must each be answered by a tool message before '{where}'.",
                param=where,
                code="invalid_value",
            )
        open_calls = _call_ids(message) if role == "assistant" else None
