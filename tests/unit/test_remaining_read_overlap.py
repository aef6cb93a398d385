"""The remaining-quota read for the x-ratelimit-* headers overlaps the upstream call: before the
first byte, the only quota-store round trip is the reservation."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from quotagate.config_models import parse_config
from quotagate.identity import Identity
from quotagate.logic.gateway import Gateway
from quotagate.providers.base import DONE_EVENT, SSEEvent
from quotagate.quota import InMemoryQuotaLedger, QuotaService, WindowUsage

IDENTITY = Identity(tenant="acme", consumer="u1", key_id="jwt:acme:u1", plan="pro", auth_type="jwt")
CONFIG = parse_config(
    {
        "providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:1/v1"}},
        "models": {"m": {"provider": "p", "upstream_model": "m"}},
        "plans": {
            "pro": {
                "models": "*",
                "default_max_tokens": 50,
                "limits": {"requests_per_minute": 10, "tokens_per_minute": 10_000},
            }
        },
    }
)


class StoreLikeDynamo(InMemoryQuotaLedger):
    """Reserve learns nothing about ``used`` (like the proxy's DynamoDB ledger); the read of
    remaining quota only completes once the upstream has been called."""

    def __init__(self, upstream_called: threading.Event) -> None:
        super().__init__()
        self.upstream_called = upstream_called
        self.events: list[str] = []

    def reserve(self, request_id, charges, record=None):
        usages = super().reserve(request_id, charges, record)
        self.events.append("reserve")
        return [WindowUsage(u.charge, None) for u in usages]

    def read_used(self, charges):
        self.events.append("read started")
        assert self.upstream_called.wait(5), "the remaining-quota read ran before the upstream call"
        return super().read_used(charges)


class Provider:
    def __init__(self, called: threading.Event) -> None:
        self.called = called

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        self.called.set()
        return {
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }

    async def stream(self, body: dict[str, Any]):
        self.called.set()
        yield SSEEvent.from_chunk(
            {
                "object": "chat.completion.chunk",
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
            }
        )
        yield DONE_EVENT


class Factory:
    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    def for_target(self, target):
        return self.provider


def run(stream: bool) -> tuple[dict[str, str], list[str]]:
    called = threading.Event()
    ledger = StoreLikeDynamo(called)
    gateway = Gateway(lambda: CONFIG, key_records=None, quota=QuotaService(ledger), providers=Factory(Provider(called)))

    async def go():
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        response = await gateway.chat(IDENTITY, json.dumps(body).encode(), "req-1")
        headers = response.headers
        if stream:
            _ = [chunk async for chunk in response.body()]
        await response.finish(200)
        return headers

    return asyncio.run(go()), ledger.events


def test_remaining_headers_are_read_while_the_upstream_answers():
    for stream in (False, True):
        headers, events = run(stream)
        assert events == ["reserve", "read started"]
        assert headers["x-ratelimit-remaining-requests"] == "9"
        assert headers["x-ratelimit-limit-tokens"] == "10000"
