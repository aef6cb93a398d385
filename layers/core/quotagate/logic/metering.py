"""Actual token usage of one request: from the provider's ``usage`` when it reports one,
otherwise counted with tiktoken from what was actually sent and received."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from quotagate import tokens

if TYPE_CHECKING:
    from quotagate.providers.base import SSEEvent

# Where the numbers came from: the provider's own usage report, or tiktoken over the text.
MeteredSource = Literal["provider", "counted"]
# A running count re-encodes at most about this many trailing characters per piece.
RUNNING_TAIL_CHARS = 256
# Tokens left in the re-encoded tail when the rest is set aside: a piece can only change how the
# last few tokens of the text merge.
RUNNING_TAIL_TOKENS = 8
OUTPUT_TEXT_FIELDS = ("content", "refusal", "reasoning_content")


def delta_texts(delta: dict[str, Any]) -> list[str]:
    """The output text one streamed chat delta carries (content, refusal, reasoning, tool and
    function calls' names and arguments): what the provider bills as output."""
    texts = [delta[k] for k in OUTPUT_TEXT_FIELDS if isinstance(delta.get(k), str)]
    for call in delta.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts.extend(function[k] for k in ("name", "arguments") if isinstance(function.get(k), str))
    function_call = delta.get("function_call")
    if isinstance(function_call, dict):
        texts.extend(function_call[k] for k in ("name", "arguments") if isinstance(function_call.get(k), str))
    return texts


def chunk_text(data: dict[str, Any]) -> str:
    """The output text of one streamed chat chunk, every choice."""
    parts: list[str] = []
    for choice in data.get("choices") or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            parts.extend(delta_texts(delta))
    return "".join(parts)


class RunningCount:
    """cl100k tokens of a text that arrives in pieces, counted as ONE text: the same number
    ``tokens.count_text`` gives for the whole (a sum of per-piece counts is not: ``"w "`` is 2
    tokens alone and 1 inside ``"w w w "``). Only a short tail is re-encoded per piece."""

    def __init__(self) -> None:
        self._settled = 0  # tokens of the text before the tail (they no longer change)
        self._tail = ""
        self._tail_tokens = 0
        self._peeked: tuple[str, int, str, int] | None = None  # (piece, settled, tail, tail tokens)

    @property
    def total(self) -> int:
        return self._settled + self._tail_tokens

    def _with(self, piece: str) -> tuple[int, str, int]:
        settled, tail = self._settled, self._tail + piece
        ids = tokens.encoding().encode(tail, disallowed_special=())
        if len(tail) > RUNNING_TAIL_CHARS and len(ids) > RUNNING_TAIL_TOKENS:
            head_ids = ids[:-RUNNING_TAIL_TOKENS]
            try:
                head = tokens.encoding().decode_bytes(head_ids).decode()
            except UnicodeDecodeError:  # the split falls inside a character: keep it all
                head = ""
            if head and tail.startswith(head):
                return settled + len(head_ids), tail[len(head) :], len(ids) - len(head_ids)
        return settled, tail, len(ids)

    def peek(self, piece: str) -> int:
        """How many tokens ``piece`` would add to the count (0 for an empty piece)."""
        if not piece:
            return 0
        settled, tail, tail_tokens = self._with(piece)
        self._peeked = (piece, settled, tail, tail_tokens)
        return max(0, settled + tail_tokens - self.total)

    def add(self, piece: str) -> None:
        if not piece:
            return
        peeked, self._peeked = self._peeked, None
        if peeked is not None and peeked[0] == piece:
            _, self._settled, self._tail, self._tail_tokens = peeked
        else:
            self._settled, self._tail, self._tail_tokens = self._with(piece)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int  # every input token, cached ones included
    completion_tokens: int
    source: MeteredSource
    cache_read_tokens: int = 0  # of prompt_tokens: read from a prompt cache
    cache_creation_tokens: int = 0  # of prompt_tokens: written to a prompt cache
    cache_creation_1h_tokens: int = 0  # of cache_creation_tokens: into the 1-hour cache
    audio_prompt_tokens: int = 0  # of prompt_tokens: audio (priced apart, see logic.pricing)
    audio_completion_tokens: int = 0  # of completion_tokens: audio
    service_tier: str | None = None  # the tier the provider says it served the request in
    tool_calls: dict[str, int] = field(default_factory=dict)  # hosted tool -> calls the provider reported

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


UsageNumbers = tuple[int, int, int, int, int, int, int]


def _usage_numbers(usage: Any) -> UsageNumbers | None:
    """(prompt, completion, cache read, cache creation, 1-hour cache creation, audio prompt, audio
    completion) of an OpenAI usage."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int) and prompt >= 0 and completion >= 0:
        details = usage.get("prompt_tokens_details")
        details = details if isinstance(details, dict) else {}
        output_details = usage.get("completion_tokens_details")
        output_details = output_details if isinstance(output_details, dict) else {}
        return (
            prompt,
            completion,
            _count(details.get("cached_tokens")),
            _count(details.get("cache_creation_tokens")),
            _count(details.get("cache_creation_1h_tokens")),
            _count(details.get("audio_tokens")),
            _count(output_details.get("audio_tokens")),
        )
    return None


class Meter:
    """Watches a response (streamed or not) and tells what it cost."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self._messages = messages
        self.prompt_estimate: int | None = None  # charged when the provider reports no usage
        self._reported: UsageNumbers | None = None
        self.service_tier: str | None = None  # as the provider reports it
        self.output = RunningCount()  # the one count of the answer: budget, cut and settlement
        self.events_seen = 0

    def output_tokens(self, data: dict[str, Any]) -> int:
        """Tokens this chunk adds to the answer's count (before it is observed)."""
        return self.output.peek(chunk_text(data))

    def observe_chunk(self, event: SSEEvent, client_wants_usage: bool) -> bool:
        """Record a streamed event; returns whether it should be forwarded to the client."""
        data = event.data
        if data is None:
            return True
        self.events_seen += 1
        reported = _usage_numbers(data.get("usage"))
        if isinstance(data.get("service_tier"), str):
            self.service_tier = data["service_tier"]
        if reported:
            self._reported = reported
        self.output.add(chunk_text(data))
        # The usage-only chunk we asked for on the client's behalf is not theirs to see.
        is_usage_chunk = reported is not None and not data.get("choices")
        return client_wants_usage or not is_usage_chunk

    def usage(self, upstream_started: bool = True) -> Usage:
        """Provider-reported usage if any; else tiktoken counts. Nothing is charged for a request the
        upstream never started (it refused or was unreachable)."""
        if self._reported:
            prompt, completion, read, created, created_1h, audio_in, audio_out = self._reported
            return Usage(
                prompt, completion, "provider", read, created, created_1h, audio_in, audio_out, self.service_tier
            )
        if not upstream_started:
            return Usage(0, 0, source="counted")
        estimate = self.prompt_estimate
        counted_prompt = estimate if estimate is not None else tokens.chat_prompt_tokens(self._messages)
        return Usage(counted_prompt, self.output.total, source="counted")
