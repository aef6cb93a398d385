"""Circuit breaker with a fake clock over the in-memory store (same contract as the DynamoDB store,
which tests/integration/test_routing_circuit_store.py runs through the same scenarios).

``fail`` is an outage: each failure comes from another tenant. The tenant scenarios at the end are
one caller failing on its own (its content, not the target)."""

from __future__ import annotations

import itertools

import pytest

from quotagate.config import BreakerPolicy
from quotagate.dal.circuit_store import InMemoryCircuitStore
from quotagate.logic.breaker import CircuitBreaker, CircuitState, Permit, caller_of
from tests.helpers import FakeClock

TARGET = "openai/gpt-4o-mini"
POLICY = BreakerPolicy(
    failure_threshold=3, tenant_threshold=3, cooldown_seconds=30, probe_lease_seconds=10, cache_seconds=2
)
TENANTS = (caller_of(f"tenant-{n}") for n in itertools.count())
HOSTILE, HEALTHY = caller_of("hostile"), caller_of("healthy")


class CountingStore(InMemoryCircuitStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.fail = False

    def get_many(self, targets):
        self.reads += 1
        if self.fail:
            raise ConnectionError("store down")
        return super().get_many(targets)

    def add_failure(self, *args, **kwargs):
        if self.fail:
            raise ConnectionError("store down")
        return super().add_failure(*args, **kwargs)

    def acquire_probe(self, *args, **kwargs):
        if self.fail:
            raise ConnectionError("store down")
        return super().acquire_probe(*args, **kwargs)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store():
    return CountingStore()


def breaker(store, clock, policy=POLICY):
    return CircuitBreaker(store, policy, clock=clock)


def fail(b: CircuitBreaker, times: int = 1, caller: str | None = None) -> None:
    """``times`` failures, each from another tenant (an outage), or from ``caller`` until its own
    circuit opens (then it no longer reaches the target)."""
    for _ in range(times):
        permit = b.allow(TARGET, caller or next(TENANTS))
        if caller is not None and permit is None:
            assert b.views([TARGET], caller)[TARGET].state == CircuitState.OPEN
            return
        assert permit is not None
        b.record_failure(permit)


def test_opens_after_consecutive_failures_then_skips(store, clock):
    b = breaker(store, clock)
    fail(b, 2)
    assert b.views([TARGET])[TARGET].state == CircuitState.CLOSED
    fail(b, 1)
    assert b.views([TARGET])[TARGET].state == CircuitState.OPEN
    assert b.allow(TARGET) is None
    view = b.views([TARGET])[TARGET]
    assert view.open_until == pytest.approx(clock.now + 30)


def test_a_success_resets_the_count(store, clock):
    b = breaker(store, clock)
    fail(b, 2)
    b.record_success(b.allow(TARGET))
    fail(b, 2)
    assert b.views([TARGET])[TARGET].state == CircuitState.CLOSED
    fail(b, 1)
    assert b.views([TARGET])[TARGET].state == CircuitState.OPEN


def test_half_open_allows_exactly_one_probe_and_a_success_closes(store, clock):
    a, other = breaker(store, clock), breaker(store, clock)  # two containers, one shared store
    fail(a, 3)
    clock.advance(29.9)
    assert a.allow(TARGET) is None
    clock.advance(0.2)
    assert a.views([TARGET])[TARGET].state == CircuitState.HALF_OPEN
    probe = a.allow(TARGET)
    assert probe == Permit(TARGET, probe=True)
    assert a.allow(TARGET) is None  # same container, second request
    assert other.allow(TARGET) is None  # another container
    a.record_success(probe)
    assert a.views([TARGET])[TARGET].state == CircuitState.CLOSED
    assert a.allow(TARGET) == Permit(TARGET)
    clock.advance(2.1)  # the other container's cache expires: it sees the circuit closed
    assert other.allow(TARGET) == Permit(TARGET)


def test_failed_probe_reopens_for_another_cooldown(store, clock):
    b = breaker(store, clock)
    fail(b, 3)
    clock.advance(31)
    probe = b.allow(TARGET)
    assert probe is not None and probe.probe
    b.record_failure(probe)
    assert b.views([TARGET])[TARGET].state == CircuitState.OPEN
    clock.advance(29)
    assert b.allow(TARGET) is None
    clock.advance(2)
    second = b.allow(TARGET)
    assert second is not None and second.probe
    b.record_success(second)
    assert b.views([TARGET])[TARGET].state == CircuitState.CLOSED
    fail(b, 2)  # the count restarted from zero
    assert b.views([TARGET])[TARGET].state == CircuitState.CLOSED


def test_a_probe_that_never_reports_frees_its_lease(store, clock):
    a, other = breaker(store, clock), breaker(store, clock)
    fail(a, 3)
    clock.advance(31)
    assert a.allow(TARGET).probe  # this container crashes without reporting
    clock.advance(5)
    assert other.allow(TARGET) is None
    clock.advance(5.1)  # the 10 s lease is over
    permit = other.allow(TARGET)
    assert permit is not None and permit.probe


def test_state_is_cached_for_cache_seconds(store, clock):
    a, other = breaker(store, clock), breaker(store, clock)
    assert other.allow(TARGET) == Permit(TARGET)
    reads = store.reads
    for _ in range(50):
        other.allow(TARGET)
    assert store.reads == reads, "a fresh cached state needs no read"
    fail(a, 3)
    reads = store.reads
    assert other.allow(TARGET) is not None  # it has not looked again yet
    clock.advance(2.01)
    assert other.allow(TARGET) is None  # one read later, the other container skips it too
    assert store.reads == reads + 1


def test_healthy_successes_cost_no_write(store, clock):
    b = breaker(store, clock)
    for _ in range(100):
        b.record_success(b.allow(TARGET))
    assert store.writes == 0
    fail(b, 1)
    writes = store.writes
    b.record_success(b.allow(TARGET))  # one write resets the count...
    b.record_success(b.allow(TARGET))  # ...and then none again
    assert store.writes == writes + 1


def test_store_errors_fail_open(store, clock):
    b = breaker(store, clock)
    store.fail = True
    assert b.allow(TARGET) == Permit(TARGET)
    b.record_failure(Permit(TARGET))  # swallowed
    assert b.views([TARGET])[TARGET].state == CircuitState.CLOSED
    store.fail = False
    fail(b, 3)
    clock.advance(31)
    store.fail = True
    assert b.allow(TARGET) == Permit(TARGET)  # cannot take the lease: let it through


def test_policy_may_come_from_the_live_configuration(store, clock):
    policies = [BreakerPolicy(failure_threshold=1, tenant_threshold=1)]
    b = CircuitBreaker(store, lambda: policies[0], clock=clock)
    fail(b, 1)
    assert b.views([TARGET])[TARGET].state == CircuitState.OPEN


def test_targets_are_independent(store, clock):
    b = breaker(store, clock)
    fail(b, 3)
    assert b.views([TARGET, "anthropic/claude"]) == {
        TARGET: b.views([TARGET])[TARGET],
        "anthropic/claude": b.views(["anthropic/claude"])["anthropic/claude"],
    }
    assert b.views(["anthropic/claude"])["anthropic/claude"].state == CircuitState.CLOSED


# -- one tenant's failures are its own -------------------------------------------------------------
def test_one_tenants_failures_open_a_circuit_for_it_alone(store, clock):
    b = breaker(store, clock)
    fail(b, 10, caller=HOSTILE)
    assert b.allow(TARGET, HOSTILE) is None
    assert b.views([TARGET], HOSTILE)[TARGET].state == CircuitState.OPEN
    assert b.allow(TARGET, HEALTHY) == Permit(TARGET, caller=HEALTHY)
    assert b.views([TARGET], HEALTHY)[TARGET].state == CircuitState.CLOSED
    assert b.views([TARGET])[TARGET].state == CircuitState.CLOSED


def test_two_tenants_are_not_enough_three_are(store, clock):
    b = breaker(store, clock)
    fail(b, 5, caller=HOSTILE)
    fail(b, 5, caller=caller_of("accomplice"))
    assert b.allow(TARGET, HEALTHY) is not None
    fail(b, 1, caller=caller_of("third"))
    assert b.allow(TARGET, HEALTHY) is None
    assert b.views([TARGET])[TARGET].state == CircuitState.OPEN


def test_a_healthy_success_between_hostile_failures_keeps_the_shared_count_down(store, clock):
    b = breaker(store, clock)
    for n in range(20):
        fail(b, 1, caller=caller_of(f"hostile-{n % 2}"))
        b.record_success(b.allow(TARGET, HEALTHY))
    assert b.views([TARGET], HEALTHY)[TARGET].state == CircuitState.CLOSED


def test_a_failing_caller_may_not_probe_the_shared_circuit(store, clock):
    b = breaker(store, clock)
    fail(b, 1, caller=HOSTILE)
    b.record_success(b.allow(TARGET, HEALTHY))  # the shared count is reset, the hostile one is not
    fail(b, 3)  # an outage opens the shared circuit
    clock.advance(31)
    assert b.allow(TARGET, HOSTILE) is None
    assert b.views([TARGET], HOSTILE)[TARGET].state == CircuitState.OPEN
    probe = b.allow(TARGET, HEALTHY)
    assert probe == Permit(TARGET, probe=True, caller=HEALTHY)
    b.record_success(probe)
    assert b.views([TARGET], HEALTHY)[TARGET].state == CircuitState.CLOSED


def test_a_callers_own_circuit_half_opens_for_its_own_probe(store, clock):
    b = breaker(store, clock)
    fail(b, 3, caller=HOSTILE)
    clock.advance(31)
    probe = b.allow(TARGET, HOSTILE)
    assert probe == Permit(TARGET, caller=HOSTILE, caller_probe=True)
    assert b.allow(TARGET, HOSTILE) is None  # one probe at a time
    b.record_failure(probe)
    assert b.allow(TARGET, HOSTILE) is None  # open again for a cool-down
    assert b.views([TARGET], HEALTHY)[TARGET].state == CircuitState.CLOSED
    clock.advance(31)
    second = b.allow(TARGET, HOSTILE)
    b.record_success(second)
    assert b.allow(TARGET, HOSTILE) == Permit(TARGET, caller=HOSTILE)


def test_tenant_values_cannot_spell_another_callers_circuit(store, clock):
    b = breaker(store, clock)
    fail(b, 3, caller=caller_of("li"))
    assert b.allow(TARGET, caller_of("li")) is None
    for spelled in ("li#caller#", f"{TARGET}#caller#li", "li\udcff", "LI"):
        assert b.allow(TARGET, caller_of(spelled)) is not None
