"""What an upstream says in an error is never copied to a client: it may quote the operator's key
("Incorrect API key provided: sk-proj-***...abcd"), an organisation id or another tenant's prompt.
The client gets a gateway message naming the provider and the status (and the provider's error
code when it is a short identifier); the free text goes to the log, with anything key-like
redacted by :func:`redact`."""

from __future__ import annotations

import logging
import re
from typing import Any

MAX_LOGGED_DETAIL = 500
REDACTED = "[redacted]"

# An error code or type a client may see: a short identifier, never free text.
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
_KEY_LIKE = (
    re.compile(r"(?i)\b(?:sk|pk|rk)[-_][^\s\"',;)]*"),  # OpenAI / Anthropic style keys, masked ones too
    re.compile(r"(?i)\bqg_[^\s\"',;)]*"),  # this gateway's keys
    re.compile(r"(?i)\b(?:bearer|basic)\s+[^\s\"',;)]+"),
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),  # AWS access key ids
    re.compile(r"(?=[A-Za-z0-9+/_\-]*\d)[A-Za-z0-9+/_\-]{24,}=*"),  # long base64-ish or hex tokens
)
# In logs, also long tokens without a digit but with both cases (an error code such as
# ServiceUnavailableException still counts as an identifier for the client).
_MIXED_CASE_TOKEN = re.compile(r"(?=[A-Za-z0-9+/_\-]*[a-z])(?=[A-Za-z0-9+/_\-]*[A-Z])[A-Za-z0-9+/_\-]{24,}=*")


def redact(text: Any, limit: int = MAX_LOGGED_DETAIL) -> str:
    """``text`` (first ``limit`` characters) with key-like tokens replaced by ``[redacted]``."""
    value = _redact_key_like(str(text)[:limit])
    return _MIXED_CASE_TOKEN.sub(REDACTED, value)


def _redact_key_like(value: str) -> str:
    for pattern in _KEY_LIKE:
        value = pattern.sub(REDACTED, value)
    return value


def short_identifier(value: Any) -> str | None:
    """``value`` if it is a short identifier such as ``context_length_exceeded`` (safe to show)."""
    if isinstance(value, str) and _IDENTIFIER.fullmatch(value) and _redact_key_like(value) == value:
        return value
    return None


def log_upstream_error(provider: str, status: int | str | None, detail: Any) -> None:
    """The upstream's own words, for the operator: in the log, redacted; never in a response."""
    fields = {"provider": provider, "upstream_status": status, "detail": redact(detail) if detail else None}
    try:
        from quotagate.observability import logger
    except ImportError:  # pragma: no cover - Powertools is a runtime dependency
        logging.getLogger("quotagate.providers").warning("upstream error %s", fields)
        return
    logger.warning("upstream error response", extra=fields)
