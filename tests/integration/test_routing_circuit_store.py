"""The DynamoDB circuit store keeps the in-memory store's contract: the breaker scenarios of
tests/unit/test_breaker.py again, over the one-request-at-a-time moto server, plus races between
containers (exactly one opener, exactly one probe)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from quotagate import tables
from quotagate.dal.circuit_store import CircuitState, DynamoCircuitStore
from tests.helpers import FakeClock
from tests.unit import test_breaker as scenarios

TARGET = scenarios.TARGET


@pytest.fixture(scope="module")
def client():
    from quotagate_tools.local.motoserver import start_moto_server

    url, stop = start_moto_server()
    try:
        dynamodb = boto3.client("dynamodb", endpoint_url=url)
        tables.create_all(dynamodb)
        yield dynamodb
    finally:
        stop()


@pytest.fixture
def store(client):
    for item in client.scan(TableName=tables.CIRCUIT.name()).get("Items", []):
        client.delete_item(TableName=tables.CIRCUIT.name(), Key={"target": item["target"]})
    return DynamoCircuitStore(client)


@pytest.mark.parametrize(
    "scenario",
    [
        scenarios.test_opens_after_consecutive_failures_then_skips,
        scenarios.test_a_success_resets_the_count,
        scenarios.test_half_open_allows_exactly_one_probe_and_a_success_closes,
        scenarios.test_failed_probe_reopens_for_another_cooldown,
        scenarios.test_a_probe_that_never_reports_frees_its_lease,
        scenarios.test_targets_are_independent,
        scenarios.test_one_tenants_failures_open_a_circuit_for_it_alone,
        scenarios.test_two_tenants_are_not_enough_three_are,
        scenarios.test_a_healthy_success_between_hostile_failures_keeps_the_shared_count_down,
        scenarios.test_a_failing_caller_may_not_probe_the_shared_circuit,
        scenarios.test_a_callers_own_circuit_half_opens_for_its_own_probe,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_breaker_scenarios_over_dynamodb(store, scenario):
    scenario(store, FakeClock())


def test_items_expire_and_a_missing_item_is_closed(store, client):
    assert store.get_many([TARGET]) == {}
    record = store.add_failure(TARGET, 1_800_000_000.0, 5, 30)
    assert record.failures == 1 and record.state != CircuitState.OPEN
    item = client.get_item(TableName=tables.CIRCUIT.name(), Key={"target": {"S": TARGET}})["Item"]
    assert int(item["expires_at"]["N"]) > 1_800_000_000
    ttl = client.describe_time_to_live(TableName=tables.CIRCUIT.name())["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expires_at" and ttl["TimeToLiveStatus"] == "ENABLED"


def test_concurrent_failures_open_the_circuit_once(store):
    now = 1_800_000_000.0

    def one(i):
        return store.add_failure(TARGET, now + i * 0.001, 5, 30)

    with ThreadPoolExecutor(max_workers=20) as pool:
        records = list(pool.map(one, range(20)))
    final = store.get_many([TARGET])[TARGET]
    assert final.state == CircuitState.OPEN and final.failures == 20
    # Opened exactly once: the cool-down was not pushed back by later failures.
    assert {r.open_until for r in records if r.state == CircuitState.OPEN} == {final.open_until}


def test_exactly_one_container_takes_the_probe(store):
    now = 1_800_000_000.0
    for _ in range(5):
        store.add_failure(TARGET, now, 5, 30)
    later = now + 31

    def one(i):
        return store.acquire_probe(TARGET, later, 10, f"container-{i}")[0]

    with ThreadPoolExecutor(max_workers=20) as pool:
        taken = list(pool.map(one, range(20)))
    assert taken.count(True) == 1
    assert store.acquire_probe(TARGET, later + 10.5, 10, "late")[0], "an expired lease is free again"
