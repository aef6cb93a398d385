"""Fixtures shared by the integration tests."""

from __future__ import annotations

import json
import threading

import pytest


@pytest.fixture
def stats(mock):
    """The counters of the module's ``mock`` server, reset for each test."""
    mock.stats.reset()
    return mock.stats


class FlakyUpstream:
    """ASGI wrapper around the mock: the next ``n`` chat requests get ``status`` (with
    ``retry-after``), the later ones reach the mock."""

    def __init__(self, app) -> None:
        self.app = app
        self.state = app.state
        self._lock = threading.Lock()
        self._failures = 0
        self.status = 429
        self.retry_after: str | None = "1"
        self.hits = 0

    def arm(self, failures: int, status: int = 429, retry_after: str | None = "1") -> None:
        with self._lock:
            self._failures, self.status, self.retry_after, self.hits = failures, status, retry_after, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            with self._lock:
                self.hits += 1
                fail = self._failures > 0
                self._failures -= 1 if fail else 0
            if fail:
                body = json.dumps(
                    {"error": {"message": "flaky", "type": "server_error", "param": None, "code": None}}
                ).encode()
                headers = [(b"content-type", b"application/json")]
                if self.retry_after is not None:
                    headers.append((b"retry-after", self.retry_after.encode()))
                await send({"type": "http.response.start", "status": self.status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def flaky():
    """A :class:`FlakyUpstream` served on loopback, and its base URL."""
    from quotagate_tools.mock import MockServer, MockSettings, create_app

    upstream = FlakyUpstream(create_app(MockSettings(token_delay=0.001)))
    server = MockServer(app=upstream).start()  # type: ignore[arg-type]
    try:
        yield upstream, server.base_url
    finally:
        server.stop()
