"""Redaction of upstream error text (quotagate.redaction) and what the adapters keep of it."""

from __future__ import annotations

import io

import pytest
from botocore.exceptions import ClientError

from quotagate.redaction import REDACTED, known_code, redact, remember_secret

SECRETS = [
    "sk-proj-Zx81abQ9vT3kLmN0pQrStUvWxYz1234abcd",
    "sk-proj-***...abcd",
    "sk-ant-api03-Qw3rTy8uIoP1aSdFgHjKlZxCvBnM0987abcd",
    "qg_3f2a9c1d7e6b_5Yb8Kq2Lm9Np4Rs7Tv1Wx3Zc6Ad8Fg0Hj",
    "AKIAIOSFODNN7EXAMPLE",
    "dGhpcyBpcyBhIHNlY3JldCB0b2tlbiB0aGF0IGxlYWtz",
    "0123456789abcdef0123456789abcdef",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_key_like_tokens_are_redacted(secret):
    text = f"Incorrect API key provided: {secret}. See https://platform.example.com/account/api-keys."
    redacted = redact(text)
    assert secret not in redacted and secret[-8:] not in redacted
    assert REDACTED in redacted and redacted.startswith("Incorrect API key provided: ")


def test_bearer_credentials_and_plain_text():
    assert "abc.def" not in redact("header was Bearer abc.def")
    plain = "This model's maximum context length is 8192 tokens, you asked for 9000."
    assert redact(plain) == plain
    assert len(redact("x" * 10_000)) == 500


@pytest.mark.parametrize(
    "value, expected",
    [
        ("context_length_exceeded", "context_length_exceeded"),
        ("invalid_request_error", "invalid_request_error"),
        ("ValidationException", "ValidationException"),
        ("rate_limit_exceeded", "rate_limit_exceeded"),
        ("overloaded_error", "overloaded_error"),
        ("skprojAbdEfGhIjKl", None),  # an identifier, but not a code the gateway knows
        ("my_custom_code", None),
        ("bad key sk-abc here", None),
        ("sk-proj-abcd", None),
        ("x" * 65, None),
        (None, None),
        (42, None),
        ("", None),
        ("a\nb", None),
    ],
)
def test_only_known_codes_pass(value, expected):
    assert known_code(value) == expected


# Not the integration tests' key: the registry is per process and they remember theirs.
LETTERS_KEY = "unit-secret-token-onlyletters-qwertyzx"


def test_a_remembered_secret_is_redacted_whatever_its_shape():
    text = f"Incorrect API key provided: {LETTERS_KEY}."
    assert LETTERS_KEY in redact(text), "no pattern can guess it"
    remember_secret(LETTERS_KEY)
    assert redact(text) == f"Incorrect API key provided: {REDACTED}."
    assert redact(f"{'x' * 480} {LETTERS_KEY}") == f"{'x' * 480} {REDACTED}"[:500], "a cut never leaves a prefix"
    remember_secret("short")  # too short to be told from words
    assert redact("a short text") == "a short text"


def test_no_proxy_log_line_contains_a_remembered_secret(monkeypatch):
    from quotagate.observability import logger

    stream = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", stream)
    secret = "quiet-words-only-provider-token"
    remember_secret(secret)
    logger.warning(f"message {secret}", extra={"detail": {"nested": [secret]}, "plain": secret})
    try:
        raise ValueError(f"boom {secret}")
    except ValueError:
        logger.exception("failed")
    logged = stream.getvalue()
    assert secret not in logged and logged.count(REDACTED) >= 4, logged
    assert '"message":"message [redacted]"' in logged


def test_bedrock_error_text_goes_to_the_log_redacted(monkeypatch):
    from quotagate.observability import logger
    from quotagate.providers import bedrock

    stream = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", stream)
    secret = SECRETS[0]
    error = ClientError(
        {
            "Error": {"Code": "AccessDeniedException", "Message": f"User with key {secret} denied"},
            "ResponseMetadata": {"HTTPStatusCode": 403, "HTTPHeaders": {}},
        },
        "Converse",
    )
    upstream = bedrock.upstream_error(error, "bedrock")
    assert upstream.message == "Upstream provider 'bedrock' returned AccessDeniedException (HTTP 403)."
    logged = stream.getvalue()
    assert "User with key [redacted] denied" in logged and secret not in logged


def test_anthropic_stream_error_keeps_the_type_not_the_text(monkeypatch):
    from quotagate.config import Provider
    from quotagate.observability import logger
    from quotagate.providers.anthropic import AnthropicProvider
    from quotagate.providers.exceptions import AnthropicStreamError

    stream = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", stream)
    provider = AnthropicProvider(Provider("claude", "anthropic", "http://127.0.0.1:1/v1"), None, None)  # type: ignore[arg-type]
    error = provider._stream_error(AnthropicStreamError("overloaded_error", f"busy, key {SECRETS[2]}"), False)
    assert str(error) == "Upstream provider 'claude' reported an error (overloaded_error)."
    assert error.status == 503
    assert SECRETS[2] not in stream.getvalue() and "busy, key [redacted]" in stream.getvalue()
