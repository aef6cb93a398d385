"""Exceptions of the provider adapters, with the HTTP status each maps to where it has one."""

from __future__ import annotations

from http import HTTPStatus


class UpstreamError(Exception):
    """The upstream refused or failed before anything was sent to the client. ``status`` is the one
    the gateway answers with (the provider's own, or the one its error maps to)."""

    def __init__(
        self,
        status: int,
        message: str,
        retry_after: float | None = None,
        error_type: str = "api_error",
        code: str | None = "upstream_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.error_type = error_type
        self.code = code


class UpstreamTimeout(UpstreamError):
    def __init__(self, message: str) -> None:
        super().__init__(HTTPStatus.GATEWAY_TIMEOUT, message, error_type="timeout", code="upstream_timeout")


class StreamInterrupted(Exception):
    """The upstream stream broke after it had started (connection drop, idle timeout). The status
    line has been sent: the client gets an error event, never a status."""


class TranslationError(ValueError):
    """An OpenAI request that cannot be expressed as an Anthropic Messages request."""

    status = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class AnthropicStreamError(Exception):
    """An ``error`` event in a Messages stream (its status depends on ``error_type``: see
    ``providers.anthropic``)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
