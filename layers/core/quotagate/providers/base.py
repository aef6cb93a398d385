"""The provider adapter interface: the proxy talks to every model provider through it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass
class SSEEvent:
    """One server-sent event in OpenAI chat-chunk form: the bytes to forward and their parsed data."""

    raw: bytes
    data: dict[str, Any] | None = None  # parsed JSON of the data line, if any
    done: bool = False  # data: [DONE]

    @classmethod
    def from_chunk(cls, chunk: dict[str, Any]) -> SSEEvent:
        return cls(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n", chunk)


DONE_EVENT = SSEEvent(b"data: [DONE]\n\n", None, True)


class UpstreamError(Exception):
    """The upstream refused or failed before anything was sent to the client."""

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
        super().__init__(504, message, error_type="timeout", code="upstream_timeout")


class StreamInterrupted(Exception):
    """The upstream stream broke after it had started (connection drop, idle timeout)."""


class ChatProvider(Protocol):
    async def complete(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, body: dict[str, Any]) -> AsyncIterator[SSEEvent]:
        """Events of a streamed completion. Raises UpstreamError before the first event,
        StreamInterrupted after it. Closing the iterator cancels the upstream call."""
        ...


@runtime_checkable
class EmbeddingsProvider(Protocol):
    """A provider that also serves ``POST /v1/embeddings`` (checked with ``isinstance``)."""

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """The OpenAI embeddings response for ``body``. Raises UpstreamError."""
        ...
