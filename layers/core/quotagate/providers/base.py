"""The provider adapter interface: the proxy talks to every model provider through it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


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
