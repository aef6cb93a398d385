"""A chat stream's chunks carry ``"usage": null`` because the gateway asks every upstream for usage;
a client that did not ask gets each chunk without it, and nothing else changed: the same JSON,
whatever way the gateway takes the key out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from quotagate.config_models import parse_config
from quotagate.identity import Identity
from quotagate.logic.gateway import Gateway
from quotagate.providers.base import DONE_EVENT, SSEEvent
from quotagate.quota import InMemoryQuotaLedger, QuotaService

IDENTITY = Identity(tenant="acme", consumer="u1", key_id="jwt:acme:u1", plan="pro", auth_type="jwt")
CONFIG = parse_config(
    {
        "providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:1/v1"}},
        "models": {"m": {"provider": "p", "upstream_model": "m"}},
        "plans": {"pro": {"models": "*", "default_max_tokens": 50}},
    }
)
HEAD = '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m"'
CONTENT = HEAD + ',"choices":[{"index":0,"delta":{"content":"caf\\u00e9 \\"usage\\":null}"},"finish_reason":null}]'


def raw(text: str) -> SSEEvent:
    return SSEEvent(b"data: " + text.encode() + b"\n\n", json.loads(text))


UPSTREAM = [
    # OpenAI's compact chunks: usage null until the last chunk.
    raw(CONTENT + ',"usage":null}'),
    # The same with a space, and a nested "usage" (in a choice) that is not the chunk's own.
    raw(HEAD + ',"choices":[{"index":0,"delta":{},"usage":null,"finish_reason":"stop"}], "usage": null}'),
    # A usage key twice: the last one wins when parsed, and neither reaches the client.
    raw(HEAD + ',"usage":{"prompt_tokens":1},"choices":[],"usage":null}'),
    SSEEvent.from_chunk(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
    ),
    DONE_EVENT,
]


class Provider:
    async def stream(self, body: dict[str, Any]):
        for event in UPSTREAM:
            yield event

    def for_target(self, target):
        return self


def client_events(stream_options: dict[str, Any] | None) -> list[Any]:
    gateway = Gateway(lambda: CONFIG, key_records=None, quota=QuotaService(InMemoryQuotaLedger()), providers=Provider())

    async def go() -> bytes:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        if stream_options is not None:
            body["stream_options"] = stream_options
        response = await gateway.chat(IDENTITY, json.dumps(body).encode(), "req-1")
        chunks = b"".join([chunk async for chunk in response.body()])
        await response.finish(200)
        return chunks

    lines = [line for line in asyncio.run(go()).split(b"\n\n") if line]
    assert all(line.startswith(b"data: ") for line in lines)
    return [line[6:].decode() for line in lines]


def test_a_client_that_did_not_ask_for_usage_gets_the_chunks_without_it():
    first, second, third, done = client_events(None)
    assert first == CONTENT + "}"  # byte for byte what the upstream sent, without the key
    assert json.loads(first)["choices"][0]["delta"]["content"] == 'café "usage":null}'
    assert "usage" not in json.loads(second) and json.loads(second)["choices"][0]["usage"] is None
    assert "usage" not in json.loads(third) and '"usage"' not in third
    assert done == "[DONE]"  # the usage-only chunk was the gateway's to read, not the client's


def test_a_client_that_asked_for_usage_gets_every_chunk_as_the_upstream_sent_it():
    events = client_events({"include_usage": True})
    assert [e.encode() for e in events] == [e.raw[6:-2] for e in UPSTREAM]
