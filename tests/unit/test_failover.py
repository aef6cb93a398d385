"""The failover loop on its own (:mod:`quotagate.logic.failover`): an endpoint's attempt per target,
what each failure means, the breaker's verdicts, Retry-After rounds and the deadline. Fake clock."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from quotagate.config_models import parse_config
from quotagate.dal.circuit_store import InMemoryCircuitStore
from quotagate.errors import GatewayError
from quotagate.identity import Identity
from quotagate.logic.breaker import CircuitBreaker
from quotagate.logic.failover import AttemptFailed, Deadline, Failover, GatewayFault
from quotagate.logic.request_types import Outcome
from quotagate.providers.exceptions import UpstreamError
from tests.helpers import FakeClock

CONFIG = parse_config(
    {
        "providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "read_timeout": 5}},
        "models": {"alias": {"targets": [{"provider": "p", "upstream_model": m} for m in ("a", "b")]}},
        "plans": {"pro": {"models": "*"}},
        "circuit_breaker": {"failure_threshold": 5, "cooldown_seconds": 30},
    }
)
TARGETS = CONFIG.models["alias"].targets
A, B = TARGETS


def failover(clock: FakeClock, deadline_in: float | None = None) -> tuple[Failover, InMemoryCircuitStore]:
    store = InMemoryCircuitStore()
    breaker = CircuitBreaker(store, CONFIG.circuit_breaker, clock=clock)
    outcome = Outcome("r", Identity("t", "c", "k", "pro", "jwt"), "alias", requested_model="alias")
    deadline = Deadline(clock, None if deadline_in is None else clock.now + deadline_in)
    return Failover(breaker, CONFIG.timeouts_for, deadline, outcome, clock.async_sleep, max_retry_wait=20), store


def scripted(script: dict[str, list[Any]]):
    calls: list[str] = []

    async def attempt(target) -> str:
        calls.append(target.id)
        step = script[target.id].pop(0) if script[target.id] else "ok"
        if isinstance(step, BaseException):
            raise step
        return f"served by {target.id}"

    return attempt, calls


def test_the_next_target_serves_after_a_server_error_and_the_circuit_hears_it():
    loop, store = failover(FakeClock())
    attempt, calls = scripted({A.id: [AttemptFailed(UpstreamError(502, "boom"))], B.id: []})
    served = asyncio.run(loop.run([A, B], attempt))
    assert (served.target, served.result) == (B, f"served by {B.id}")
    assert calls == [A.id, B.id]
    assert store.get_many([A.id])[A.id].failures == 1
    assert loop.outcome.attempts == [f"{A.id}: 502 upstream_error"]


def test_a_client_error_stops_the_loop_and_is_not_held_against_the_target():
    loop, store = failover(FakeClock())
    attempt, calls = scripted({A.id: [UpstreamError(400, "bad", error_type="invalid_request_error")], B.id: []})
    with pytest.raises(GatewayError) as refused:
        asyncio.run(loop.run([A, B], attempt))
    assert refused.value.status == 400 and calls == [A.id]
    assert store.get_many([A.id]) == {}


def test_a_gateway_fault_is_a_500_without_failover():
    loop, store = failover(FakeClock())
    attempt, calls = scripted({A.id: [GatewayFault()], B.id: []})
    with pytest.raises(GatewayError) as fault:
        asyncio.run(loop.run([A, B], attempt))
    assert fault.value.status == 500 and calls == [A.id] and store.get_many([A.id]) == {}


def test_retry_after_is_waited_for_then_only_the_freed_target_is_tried():
    clock = FakeClock()
    loop, _ = failover(clock, deadline_in=10)
    limited = [AttemptFailed(UpstreamError(429, "slow", retry_after=after)) for after in (3, 2)]
    attempt, calls = scripted({A.id: [limited[0]], B.id: [limited[1]]})
    served = asyncio.run(loop.run([A, B], attempt))
    assert clock.sleeps == [2] and served.target == B and calls == [A.id, B.id, B.id]


def test_a_retry_after_past_the_deadline_is_passed_on_to_the_client():
    clock = FakeClock()
    loop, _ = failover(clock, deadline_in=1)
    attempt, _ = scripted({A.id: [AttemptFailed(UpstreamError(429, "slow", retry_after=4))], B.id: []})
    with pytest.raises(GatewayError) as limited:
        asyncio.run(loop.run([A], attempt))
    assert clock.sleeps == [] and limited.value.headers["retry-after"] == "4"


def test_within_first_byte_cuts_a_slow_call_at_the_deadline():
    loop, _ = failover(FakeClock())
    loop.deadline = Deadline(time.monotonic, time.monotonic() + 0.05)  # real time: the call really waits

    async def attempt(target):
        return await loop.within_first_byte(target, asyncio.sleep(5))

    with pytest.raises(GatewayError) as late:
        asyncio.run(loop.run([A], attempt))
    assert late.value.status == 504 and late.value.code == "deadline_exceeded"
