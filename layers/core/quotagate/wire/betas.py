"""The ``anthropic-beta`` values a client may send through the gateway, each with its cost effect.

An allow-listed value reaches Anthropic targets; the features it enables are handled on the other
targets by the fields' own dispositions (:mod:`quotagate.wire.messages`: emulated or dropped). Any
other value is dropped (never sent) and named in ``x-quotagate-dropped-betas``: a beta can change
what a request costs (1M context, fast mode, server tools), so only declared ones pass.
"""

from __future__ import annotations

from typing import Final

# beta name -> why it cannot make a request cost more than the gateway reserves.
ALLOWED_BETAS: Final[dict[str, str]] = {
    "claude-code-20250219": "identifies Claude Code; no cost effect",
    "context-management-2025-06-27": "clearing tool uses and thinking only shortens the prompt, reserved whole",
    "interleaved-thinking-2025-05-14": "thinking between tool calls is output, bounded by max_tokens",
    "fine-grained-tool-streaming-2025-05-14": "how tool input is streamed; no cost effect",
    "effort-2025-11-24": "output_config.effort: thinking is output, bounded by max_tokens",
    "prompt-caching-2024-07-31": "cache writes are priced in the reservation (as 1-hour writes)",
    "extended-cache-ttl-2025-04-11": "1-hour cache writes are what the reservation prices",
    "token-efficient-tools-2025-02-19": "fewer tokens for tool calls",
    "structured-outputs-2025-11-13": "output_config.format; the schema is counted as prompt",
    "output-128k-2025-02-19": "the output cap is max_tokens, reserved whole",
    "output-300k-2026-03-24": "the output cap is max_tokens, reserved whole",
    "pdfs-2024-09-25": "documents are counted in the reservation",
    "token-counting-2024-11-01": "count_tokens is answered by the gateway",
    "thinking-display-updates-2026-08-18": "how thinking is shown; no cost effect",
}
BETA_HEADER: Final = "anthropic-beta"
DROPPED_BETAS_HEADER: Final = "x-quotagate-dropped-betas"
MAX_BETAS: Final = 32


def split_betas(header: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(allow-listed, dropped) values of an ``anthropic-beta`` header (comma-separated, any number
    of header lines joined by commas); each list in the client's order, without repeats."""
    if not header:
        return (), ()
    allowed: list[str] = []
    dropped: list[str] = []
    for raw in header.split(",")[:MAX_BETAS]:
        name = raw.strip()
        if not name or name in allowed or name in dropped:
            continue
        (allowed if name in ALLOWED_BETAS else dropped).append(name)
    return tuple(allowed), tuple(dropped)
