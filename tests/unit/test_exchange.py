"""One exchange, a translator per request and a dialect per target: an endpoint chooses, per target,
the request it sends and how it reads the stream, while failover, the budget, the circuit breaker
and settlement stay in the one path (:mod:`quotagate.logic.exchange`). Fake providers and clock."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from quotagate.logic.gateway import ChatTranslator
from quotagate.logic.metering import Usage
from quotagate.providers.base import SSEEvent
from quotagate.providers.exceptions import UpstreamError
from tests.unit.test_router_failover import IDENTITY, A, B, make

NATIVE_DONE = SSEEvent(b'event: stop\ndata: {"type": "stop"}\n\n', {"type": "stop"})


class NativeDialect:
    """A made-up native protocol: ``{"type": "text", "text": ...}`` events, usage in ``stop``."""

    keepalive = b": native-ping\n\n"

    def __init__(self) -> None:
        self.texts: list[str] = []

    def commits(self, event: SSEEvent) -> bool:
        return event.data is not None

    def is_end(self, event: SSEEvent) -> bool:
        return event.data is not None and event.data.get("type") == "stop"

    def is_upstream_error(self, event: SSEEvent) -> bool:
        return event.data is not None and event.data.get("type") == "error"

    def output_tokens(self, event: SSEEvent) -> int:
        return len((event.data or {}).get("text", "").split())

    def accept(self, event: SSEEvent) -> list[SSEEvent | bytes]:
        if event.data is not None and event.data.get("type") == "text":
            self.texts.append(event.data["text"])
        return [event]

    def client_bytes(self, event: SSEEvent) -> bytes:
        return event.raw  # as the upstream sent it

    def error_event(self, message: str, code: str, error_type: str) -> bytes:
        return b"event: error\ndata: " + json.dumps({"type": "error", "code": code}).encode() + b"\n\n"

    def usage(self) -> Usage:
        return Usage(5, len(" ".join(self.texts).split()), "provider")

    def answer(self, cut: bool) -> dict[str, Any]:
        return {"text": " ".join(self.texts), "cut": cut}

    def cut(self) -> list[SSEEvent | bytes]:
        return [b'event: stop\ndata: {"type": "stop", "reason": "max_tokens"}\n\n']


class NativeProvider:
    """Speaks the native protocol (``stream_native``); the provider's chat ``stream`` is never used."""

    def __init__(self, script: list[Any], words: int = 3) -> None:
        self.script, self.words, self.bodies = script, words, []

    async def stream_native(self, body: dict[str, Any]):
        self.bodies.append(body)
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, Exception):
            raise step
        for i in range(self.words):
            yield SSEEvent.from_chunk({"type": "text", "text": f"w{i}"})
        yield NATIVE_DONE

    async def stream(self, body: dict[str, Any]):  # pragma: no cover - the translator never calls it
        raise AssertionError("a native target must not get the chat body")
        yield


class SplitTranslator(ChatTranslator):
    """Target A natively (the client's body as it is), every other target the chat way."""

    def open(self, target, provider):
        if target.id == A:
            return provider.stream_native({"native": True, "model": target.upstream_model})
        return super().open(target, provider)

    def dialect(self, target):
        return NativeDialect() if target.id == A else super().dialect(target)


def run(gateway, stream: bool = True, **body: Any):
    async def go():
        request = {"model": "alias", "messages": [{"role": "user", "content": "hi"}], "stream": stream, **body}
        response = await gateway.chat(IDENTITY, json.dumps(request).encode(), "req-1", translate=SplitTranslator)
        chunks = [chunk async for chunk in response.body()] if stream else []
        await response.finish(200)
        return response, b"".join(chunks)

    return asyncio.run(go())


def test_a_target_can_be_called_and_read_in_its_own_protocol():
    gateway, _, _ = make({A: [], B: []})
    native = NativeProvider([])
    gateway.providers.providers[A] = native
    response, raw = run(gateway)
    assert response.target.id == A
    assert native.bodies == [{"native": True, "model": "model-a"}]
    assert (
        raw == b"".join(SSEEvent.from_chunk({"type": "text", "text": f"w{i}"}).raw for i in range(3)) + NATIVE_DONE.raw
    )
    # Settled at the native dialect's usage, at A's price.
    assert gateway.quota.settled == [(5, 3, (5 * 10 + 3 * 20) / 1e6)]


def test_failover_crosses_from_a_native_target_to_a_translated_one():
    gateway, _, store = make({A: [], B: []})
    native = NativeProvider([UpstreamError(503, "overloaded")])
    gateway.providers.providers[A] = native
    response, raw = run(gateway)
    assert response.target.id == B
    assert len(native.bodies) == 1 and store.get_many([A])[A].failures == 1
    assert raw.endswith(b"data: [DONE]\n\n") and b'"hi"' in raw  # B's chat chunks, B's dialect
    assert gateway.quota.settled == [(7, 1, (7 * 1 + 1 * 2) / 1e6)]


def test_the_budget_cut_ends_in_the_targets_dialect():
    gateway, _, _ = make({A: [], B: []})
    gateway.providers.providers[A] = NativeProvider([], words=500)
    response, raw = run(gateway, max_tokens=20)
    assert response.outcome.cut_by_budget
    assert raw.endswith(b'data: {"type": "stop", "reason": "max_tokens"}\n\n')
    assert raw.count(b'"type": "text"') < 500


def test_a_json_client_gets_the_dialects_answer():
    gateway, _, _ = make({A: [], B: []})
    gateway.providers.providers[A] = NativeProvider([])
    response, _ = run(gateway, stream=False)
    assert response.json == {"text": "w0 w1 w2", "cut": False}
