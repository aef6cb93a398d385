"""``POST /v1/embeddings`` goes through the same request pipeline as chat completions: the alias's
deadline and the gateway's request cap, Retry-After rounds, the request's clock from its first
moment, and no blocking call for circuit state the container already holds. Fake providers, a fake
clock and a fake sleep; no network."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import TYPE_CHECKING, Any

import pytest

from quotagate.dal.circuit_store import InMemoryCircuitStore
from quotagate.errors import GatewayError
from quotagate.logic.breaker import CircuitBreaker
from quotagate.logic.gateway import Gateway
from quotagate.logic.router import Router
from quotagate.providers.exceptions import UpstreamError
from tests.helpers import FakeClock
from tests.unit.test_router_failover import IDENTITY, A, B, FakeQuota, config

if TYPE_CHECKING:
    from quotagate.logic.request_types import Outcome


def embedding(model: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}],
        "model": model,
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }


class EmbeddingsProvider:
    """Plays a script: each call takes the next step (an exception, seconds of real silence, or 'ok')."""

    def __init__(self, script: list[Any]) -> None:
        self.script, self.calls = script, 0

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, float):
            await asyncio.sleep(step)
        if isinstance(step, Exception):
            raise step
        return embedding(body["model"])


class Factory:
    def __init__(self, scripts: dict[str, list[Any]]) -> None:
        self.providers = {target: EmbeddingsProvider(script) for target, script in scripts.items()}

    def for_target(self, target):
        return self.providers[target.id]


class SlowReservationQuota(FakeQuota):
    """A quota store whose reservation takes ``seconds`` on the gateway's clock."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds
        self.settlements: list[Any] = []

    def reserve(self, *args, **kwargs):
        self.clock.now += self.seconds
        return super().reserve(*args, **kwargs)

    def settle(self, reservation, prompt_tokens, completion_tokens, actual_usd, settlement=None) -> bool:
        self.settlements.append(settlement)
        return super().settle(reservation, prompt_tokens, completion_tokens, actual_usd)


class CountingBreaker(CircuitBreaker):
    """Counts the calls that may do I/O (the gateway runs them in a worker thread)."""

    blocking_reads = 0

    def views(self, targets, caller=None):
        self.blocking_reads += 1
        return super().views(targets, caller)


def make(
    scripts: dict[str, list[Any]],
    deadline: float | None = 10,
    max_request_seconds: float | None = None,
    real_time: bool = False,
):
    clock = FakeClock()
    cfg = config(deadline, 100)  # first-byte timeouts: 5 s
    outcomes: list[Outcome] = []
    quota = SlowReservationQuota(clock, 0.0)
    gateway = Gateway(
        lambda: cfg,
        key_records=None,
        quota=quota,
        providers=Factory(scripts),
        router=Router(random.Random(0)),
        breaker=CountingBreaker(InMemoryCircuitStore(), cfg.circuit_breaker, clock=lambda: clock.now),
        clock=time.monotonic if real_time else clock,
        sleep=asyncio.sleep if real_time else clock.async_sleep,
        max_retry_wait=20,
        max_request_seconds=max_request_seconds,
        on_finished=outcomes.append,
    )
    return gateway, clock, outcomes, quota


def embed(gateway: Gateway, request_id: str = "req-1") -> tuple[dict[str, Any], dict[str, str]]:
    body = json.dumps({"model": "alias", "input": "hello there"}).encode()
    return asyncio.run(gateway.embeddings(IDENTITY, body, request_id))


def rate_limited(after: float) -> UpstreamError:
    return UpstreamError(429, "slow down", retry_after=after, code="upstream_rate_limited")


def test_the_alias_deadline_ends_an_embeddings_request():
    # The target would answer after 3 s (its first-byte timeout is 5 s); the alias allows 0.3 s.
    gateway, _, outcomes, _ = make({A: [3.0], B: [3.0]}, deadline=0.3, real_time=True)
    started = time.monotonic()
    with pytest.raises(GatewayError) as late:
        embed(gateway)
    assert late.value.status == 504 and late.value.code == "deadline_exceeded"
    assert time.monotonic() - started < 1.5
    assert outcomes[0].status == 504


def test_the_gateway_request_cap_ends_an_embeddings_request():
    # No alias deadline: the gateway's cap (QG_MAX_REQUEST_SECONDS) still ends it, and settles it.
    gateway, _, _, quota = make({A: [3.0], B: [3.0]}, deadline=None, max_request_seconds=0.3, real_time=True)
    started = time.monotonic()
    with pytest.raises(GatewayError) as late:
        embed(gateway)
    assert late.value.code == "deadline_exceeded"
    assert time.monotonic() - started < 1.5
    assert quota.settled == [(0, 0, 0.0)]


def test_embeddings_wait_for_retry_after_when_no_target_is_left():
    gateway, clock, _, _ = make({A: [rate_limited(3)], B: [rate_limited(2)]})
    body, headers = embed(gateway)
    assert clock.sleeps == [2]  # the soonest Retry-After, then only that target again
    assert headers["x-quotagate-target"] == B
    assert body["data"][0]["embedding"] == [0.6, 0.8]


def test_embeddings_retry_after_past_the_deadline_is_passed_on():
    gateway, clock, _, _ = make({A: [rate_limited(8)], B: [rate_limited(9)]}, deadline=5)
    with pytest.raises(GatewayError) as limited:
        embed(gateway)
    assert clock.sleeps == []
    assert limited.value.status == 429 and limited.value.headers["retry-after"] == "9"


def test_the_embeddings_clock_starts_before_the_reservation():
    gateway, clock, outcomes, quota = make({A: [], B: []})
    quota.seconds = 1.5  # the quota store takes 1.5 s to reserve
    started = clock.now
    embed(gateway)
    outcome = outcomes[0]
    assert outcome.started == started
    assert outcome.finished_at is not None and outcome.finished_at - outcome.started >= 1.5
    assert quota.settlements[0].duration_ms >= 1500
    assert outcome.upstream_called_at is not None and outcome.upstream_called_at - started >= 1.5


def test_fresh_circuit_state_is_read_without_a_blocking_call():
    gateway, _, _, _ = make({A: [], B: []})
    embed(gateway, "req-1")  # reads the circuits once (the container's copy is then fresh)
    reads = gateway.breaker.blocking_reads
    embed(gateway, "req-2")
    assert gateway.breaker.blocking_reads == reads
