"""Admission on its own (:mod:`quotagate.logic.admission`): the targets an endpoint may try, in
order, the request's deadline, what is reserved, and settlement exactly once. Fakes, no network."""

from __future__ import annotations

import asyncio

import pytest

from quotagate.errors import GatewayError
from quotagate.logic.admission import ReservationSize
from quotagate.logic.metering import Usage
from quotagate.usage.record import UsageOutcome
from tests.unit.test_router_failover import IDENTITY, A, B, make


def route(gateway, **kwargs):
    return asyncio.run(gateway.admission.route(IDENTITY, "alias", "req-1", gateway.clock(), **kwargs))


def test_the_route_orders_the_usable_targets_and_sets_the_deadline():
    gateway, clock, _ = make({A: [], B: []}, deadline=10)
    gateway.max_request_seconds = 4  # the gateway's cap is shorter than the alias's deadline
    admitted = route(gateway, usable=lambda target: target.id == B)
    assert [t.id for t in admitted.order] == [B] and [t.id for t in admitted.targets] == [B]
    assert admitted.deadline.remaining() == 4
    clock.now += 1
    assert admitted.deadline.remaining() == 3


def test_an_alias_without_a_usable_target_is_a_400_naming_the_capability():
    gateway, _, _ = make({A: [], B: []})
    with pytest.raises(GatewayError) as refused:
        route(gateway, usable=lambda target: False, capability="embeddings")
    assert refused.value.status == 400 and refused.value.code == "unsupported_for_model"
    assert "does not support embeddings" in refused.value.message


def test_every_circuit_open_is_a_503_with_the_time_until_one_reopens():
    gateway, clock, store = make({A: [], B: []})
    for target in (A, B):
        store.add_failure(target, clock.now, 1, 30)
    with pytest.raises(GatewayError) as unavailable:
        route(gateway)
    assert unavailable.value.status == 503 and unavailable.value.headers["retry-after"] == "30"
    assert gateway.quota.reserved_usd == []


def test_reserve_then_settle_exactly_once_with_the_outcome_recorded():
    gateway, clock, _ = make({A: [], B: []})
    finished = []
    gateway.on_finished = finished.append

    async def go():
        admitted = await gateway.admission.reserve(route_sync, ReservationSize(100, 50, 0.01))
        await admitted.remaining_read_done()
        target = admitted.route.order[0]
        clock.now += 2
        await admitted.settle(target, Usage(7, 3, "provider"), UsageOutcome.OK, 200)
        await admitted.settle(target, Usage(7, 3, "provider"), UsageOutcome.OK, 200)
        return admitted, target

    route_sync = route(gateway)
    admitted, target = asyncio.run(go())
    assert gateway.quota.reserved_usd == [0.01]
    assert len(gateway.quota.settled) == 1 and gateway.quota.settled[0][:2] == (7, 3)
    assert finished == [admitted.outcome]
    assert admitted.outcome.reserved_tokens == 150 and admitted.outcome.target is None
    assert admitted.outcome.finished_at - admitted.outcome.started == 2
    assert admitted.headers(target)["x-quotagate-target"] == target.id
