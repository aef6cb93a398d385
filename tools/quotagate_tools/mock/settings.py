"""How the mock model server behaves when a request does not say otherwise."""

from __future__ import annotations

import math
from dataclasses import dataclass

from quotagate_tools.mock.faults import MAX_TOKENS, parse_fault_spec

DEFAULT_MODELS: tuple[str, ...] = ("mock-gpt", "mock-gpt-mini")
DEFAULT_TOKEN_DELAY = 0.02
DEFAULT_REPLY_TOKENS = 24
MAX_TOKEN_DELAY = 60.0


@dataclass(frozen=True)
class MockSettings:
    """How the mock behaves when a request does not say otherwise."""

    token_delay: float = DEFAULT_TOKEN_DELAY  # seconds between streamed tokens
    reply_tokens: int = DEFAULT_REPLY_TOKENS  # reply length before max_tokens truncation
    models: tuple[str, ...] = DEFAULT_MODELS  # listed by /v1/models (any name is accepted)
    default_fault: str = ""  # a fault spec applied to every request (lowest precedence)
    api_key: str | None = None  # if set, /v1/* requires "Authorization: Bearer <api_key>"
    recent_requests: int = 100  # how many request records MockStats keeps

    def check(self) -> None:
        """Raise ValueError for settings the server cannot run with (at start-up, not per request)."""
        if not (math.isfinite(self.token_delay) and 0 <= self.token_delay <= MAX_TOKEN_DELAY):
            raise ValueError(f"token_delay must be between 0 and {MAX_TOKEN_DELAY:g} seconds")
        if not 0 <= self.reply_tokens <= MAX_TOKENS:
            raise ValueError(f"reply_tokens must be between 0 and {MAX_TOKENS}")
        parse_fault_spec(self.default_fault)
