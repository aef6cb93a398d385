"""Reading an Anthropic target's own Messages stream, for a Messages client (no translation).

When ``POST /v1/messages`` is served by an Anthropic target, the events the target sends are the
events the client receives (thinking and signature deltas, citations, cache usage and all). The
gateway still has to meter that stream, be able to end it, know what it cost, and answer a client
that did not ask for a stream; these are the pure pieces it does that with:

- :func:`output_tokens_of` — the cl100k tokens of one event's visible output (text, thinking, tool
  input JSON), counted before the event is forwarded, so the budget can stop the answer in time;
- :class:`NativeMessage` — everything the events said: the ``message`` a non-streaming client gets
  (content blocks assembled: texts joined, thinking with its signature, tool inputs parsed), the
  usage the target reported (``message_start`` for the input and cache counts, ``message_delta``'s
  cumulative ``output_tokens``), the blocks still open, and the closing events of an answer the
  budget cut (``content_block_stop`` for open blocks, ``message_delta`` with ``stop_reason:
  "max_tokens"`` and the usage that is settled, ``message_stop``).

Thinking is billed as output: a summarized thinking stream shows fewer tokens than the target
bills, which is why the reservation for a Messages request is always its whole ``max_tokens``
(thinking included), and why settlement takes the target's own count when it sends one.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from quotagate import tokens
from quotagate.logic.metering import Usage
from quotagate.providers.anthropic import native_event_bytes

# The delta field that carries output text, per delta type (signatures are not output text).
OUTPUT_DELTA_FIELDS: dict[str, str] = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}
CUT_STOP_REASON = "max_tokens"


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def output_text_of(event: dict[str, Any]) -> str:
    """The visible output one event carries (text, thinking, tool input); "" for events with none."""
    if event.get("type") != "content_block_delta":
        return ""
    delta = _obj(event.get("delta"))
    text = delta.get(OUTPUT_DELTA_FIELDS.get(str(delta.get("type")), ""))
    return text if isinstance(text, str) else ""


def output_tokens_of(event: dict[str, Any]) -> int:
    """cl100k tokens (an upper bound, at least one for a non-empty delta) of the output one event
    carries alone; 0 for events that carry none. A stream is counted as one text instead
    (:class:`quotagate.logic.metering.RunningCount`)."""
    text = output_text_of(event)
    return max(1, tokens.upper_bound_text(text)) if text else 0


def usage_numbers(usage: dict[str, Any]) -> Usage | None:
    """The gateway's :class:`Usage` of an Anthropic ``usage`` object (prompt = every input token,
    cache reads and writes included); None without both token counts."""
    input_tokens, output_tokens = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    if input_tokens is None or output_tokens is None:
        return None
    read = _count(usage.get("cache_read_input_tokens")) or 0
    written = _count(usage.get("cache_creation_input_tokens")) or 0
    written_1h = _count(_obj(usage.get("cache_creation")).get("ephemeral_1h_input_tokens")) or 0
    tier = usage.get("service_tier")
    return Usage(
        input_tokens + read + written,
        output_tokens,
        "provider",
        read,
        written,
        min(written_1h, written),
        service_tier=tier if isinstance(tier, str) else None,  # the tier settled (see logic.pricing)
    )


@dataclass
class NativeMessage:
    """The events of one streamed Messages answer, assembled (pure)."""

    model: str
    head: dict[str, Any] = field(default_factory=dict)  # message_start's message, without content
    blocks: dict[int, dict[str, Any]] = field(default_factory=dict)
    open_blocks: list[int] = field(default_factory=list)
    stop_reason: str | None = None
    stop_sequence: str | None = None
    reported: dict[str, Any] = field(default_factory=dict)  # the usage fields, latest value of each
    output_final: bool = False  # message_delta carried output_tokens
    _tool_json: dict[int, str] = field(default_factory=dict)

    def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = _obj(event.get("message"))
            self.head = {k: v for k, v in message.items() if k not in ("content", "usage")}
            self.reported.update(_obj(message.get("usage")))
        elif kind == "content_block_start":
            self._start(event)
        elif kind == "content_block_delta":
            self._delta(event)
        elif kind == "content_block_stop":
            self._stop(event.get("index"))
        elif kind == "message_delta":
            delta = _obj(event.get("delta"))
            self.stop_reason = delta.get("stop_reason") or self.stop_reason
            self.stop_sequence = delta.get("stop_sequence")
            usage = _obj(event.get("usage"))
            self.reported.update({k: v for k, v in usage.items() if v is not None})
            self.output_final = self.output_final or _count(usage.get("output_tokens")) is not None

    def _start(self, event: dict[str, Any]) -> None:
        index = event.get("index")
        if not isinstance(index, int):
            return
        self.blocks[index] = copy.deepcopy(_obj(event.get("content_block")))
        self.open_blocks.append(index)

    def _delta(self, event: dict[str, Any]) -> None:
        block = self.blocks.get(event.get("index"))  # type: ignore[arg-type]
        if block is None:
            return
        delta = _obj(event.get("delta"))
        kind = delta.get("type")
        if kind == "input_json_delta":
            self._tool_json[event["index"]] = self._tool_json.get(event["index"], "") + str(
                delta.get("partial_json") or ""
            )
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))
        else:
            name = OUTPUT_DELTA_FIELDS.get(str(kind)) or ("signature" if kind == "signature_delta" else None)
            if name is not None and isinstance(delta.get(name), str):
                block[name] = str(block.get(name) or "") + delta[name]

    def _stop(self, index: Any) -> None:
        if index in self.open_blocks:
            self.open_blocks.remove(index)
        pieces = self._tool_json.pop(index, None) if isinstance(index, int) else None
        if pieces:
            try:
                parsed = json.loads(pieces)
            except ValueError:
                parsed = None
            self.blocks[index]["input"] = parsed if isinstance(parsed, dict) else {}

    # -- what the target reported ---------------------------------------------------------------
    @property
    def usage(self) -> Usage | None:
        """The target's own count, once it has sent its final output count."""
        return usage_numbers(self.reported) if self.output_final else None

    @property
    def reported_input(self) -> Usage | None:
        """The input side the target reported in ``message_start`` (output 0), if it did."""
        return usage_numbers({**self.reported, "output_tokens": 0})

    def client_usage(self, settled: Usage | None) -> dict[str, Any]:
        """The ``usage`` object for the client: the target's fields, with the counts settled."""
        usage = dict(self.reported)
        if settled is not None:
            cached = settled.cache_read_tokens + settled.cache_creation_tokens
            usage["input_tokens"] = max(0, settled.prompt_tokens - cached)
            usage["cache_read_input_tokens"] = settled.cache_read_tokens
            usage["cache_creation_input_tokens"] = settled.cache_creation_tokens
            usage["output_tokens"] = settled.completion_tokens
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens"):
            usage.setdefault(name, 0)
        return usage

    # -- answers ----------------------------------------------------------------------------------
    def message(self, settled: Usage | None, cut: bool = False) -> dict[str, Any]:
        """The non-streamed ``message``; ``cut``: the gateway ended it (``max_tokens``)."""
        for index in list(self.open_blocks):
            self._stop(index)
        return {
            "id": self.head.get("id"),
            "type": "message",
            "role": "assistant",
            "model": self.head.get("model") or self.model,
            "content": [self.blocks[i] for i in sorted(self.blocks)],
            "stop_reason": CUT_STOP_REASON if cut else (self.stop_reason or "end_turn"),
            "stop_sequence": None if cut else self.stop_sequence,
            "usage": self.client_usage(settled),
        }

    def cut_events(self, settled: Usage | None) -> list[bytes]:
        """The end of a streamed answer the budget cannot pay for."""
        events = [native_event_bytes({"type": "content_block_stop", "index": i}) for i in self.open_blocks]
        self.open_blocks.clear()
        usage = self.client_usage(settled)
        events.append(
            native_event_bytes(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": CUT_STOP_REASON, "stop_sequence": None},
                    "usage": usage,
                }
            )
        )
        events.append(native_event_bytes({"type": "message_stop"}))
        return events
