"""What an upstream says in an error is never copied to a client: it may quote the operator's key
("Incorrect API key provided: sk-proj-***...abcd"), an organisation id or another tenant's prompt.
The client gets a gateway message naming the provider and the status (and the provider's error
code when the gateway knows it: :data:`KNOWN_UPSTREAM_CODES`); the free text goes to the log, with
anything key-like redacted by :func:`redact`.

Secrets whose shape nothing can guess (a self-hosted server's key may be plain words) are redacted by
value: the provider factory remembers each key it hands to an adapter (:func:`remember_secret`), and
the proxy's log handlers pass every line they write through :func:`redact_secrets`
(:func:`redact_log_output`), whatever logged it."""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

MAX_LOGGED_DETAIL = 500
REDACTED = "[redacted]"

# The error codes and types of the providers' documented errors: the only ones a client may see (an
# upstream's code can be anything, even a key: "skprojAbdEf..."). OpenAI's codes and types,
# Anthropic's error types, Bedrock's exception names.
KNOWN_UPSTREAM_CODES = frozenset(
    {
        # OpenAI (and compatible servers)
        "context_length_exceeded",
        "invalid_api_key",
        "invalid_request_error",
        "invalid_value",
        "invalid_type",
        "missing_required_parameter",
        "unsupported_parameter",
        "unsupported_value",
        "unknown_parameter",
        "model_not_found",
        "rate_limit_exceeded",
        "insufficient_quota",
        "tokens",
        "requests",
        "server_error",
        "content_filter",
        "content_policy_violation",
        "invalid_prompt",
        "string_above_max_length",
        "array_above_max_length",
        "integer_above_max_value",
        "invalid_image",
        "image_parse_error",
        # Anthropic
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
        "billing_error",
        "timeout_error",
        # Bedrock
        "ValidationException",
        "AccessDeniedException",
        "ThrottlingException",
        "ModelTimeoutException",
        "ModelNotReadyException",
        "ModelErrorException",
        "ModelStreamErrorException",
        "ResourceNotFoundException",
        "ServiceQuotaExceededException",
        "ServiceUnavailableException",
        "InternalServerException",
        "UnrecognizedClientException",
        "TooManyRequestsException",
        # Bedrock stream events spell them in lower camel case
        "throttlingException",
        "validationException",
        "modelStreamErrorException",
        "internalServerException",
        "serviceUnavailableException",
        "modelTimeoutException",
    }
)
MIN_REMEMBERED_SECRET = 8  # shorter values would redact ordinary words
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


_secrets: set[str] = set()  # the configured values, and their JSON-escaped spellings
_secrets_lock = threading.Lock()


def remember_secret(value: str | None) -> None:
    """A configured secret (a provider key) that no log line may contain, whatever its shape."""
    if not isinstance(value, str) or len(value) < MIN_REMEMBERED_SECRET or value in _secrets:
        return
    with _secrets_lock:
        _secrets.add(value)
        _secrets.add(json.dumps(value)[1:-1])  # as a JSON log line spells it
        _secrets.add(json.dumps(value, ensure_ascii=False)[1:-1])


def redact_secrets(text: str) -> str:
    """``text`` with every remembered secret replaced by ``[redacted]``."""
    for secret in sorted(_secrets, key=len, reverse=True) if _secrets else ():
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact(text: Any, limit: int = MAX_LOGGED_DETAIL) -> str:
    """``text`` (first ``limit`` characters) with remembered secrets and key-like tokens replaced
    by ``[redacted]`` (secrets first: the cut at ``limit`` may leave only a prefix of one)."""
    value = _redact_key_like(redact_secrets(str(text))[:limit])
    return _MIXED_CASE_TOKEN.sub(REDACTED, value)


def redact_log_output(handler: logging.Handler) -> None:
    """Every line ``handler`` writes goes through :func:`redact_secrets` (message, extra fields,
    tracebacks alike: the formatted line is what is checked)."""
    formatter = handler.formatter or logging.Formatter()
    if getattr(formatter, "redacts_secrets", False):
        return
    format_record = formatter.format

    def format_redacted(record: logging.LogRecord) -> str:
        return redact_secrets(format_record(record))

    formatter.format = format_redacted  # type: ignore[method-assign]
    formatter.redacts_secrets = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter)


def _redact_key_like(value: str) -> str:
    for pattern in _KEY_LIKE:
        value = pattern.sub(REDACTED, value)
    return value


def known_code(value: Any) -> str | None:
    """``value`` if it is an error code or type the gateway knows, such as ``context_length_exceeded``
    (safe to show a client); anything else the upstream put there stays in the log."""
    if isinstance(value, str) and value in KNOWN_UPSTREAM_CODES:
        return value
    return None
