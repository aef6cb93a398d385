"""Topping a reservation up on DynamoDB (moto server): the same windows, the same guard
``used <= limit - n``, the reservation item's reserved totals, never after settlement, and never
past a limit however many top-ups race."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from quotagate import tables
from quotagate.quota import DynamoQuotaLedger, InMemoryQuotaLedger, QuotaService, ReservationRequest
from quotagate_tools.local.motoserver import start_moto_server
from tests.helpers import FakeClock
from tests.integration.test_quota_dynamo import T0, moto_dynamodb, reserved
from tests.quota_table import QuotaTable

pytestmark = pytest.mark.timeout(60)
LIMITS = {"tokens_per_day": 1000, "usd_per_day": 1.0, "requests_per_minute": 100}


@pytest.fixture(scope="module")
def dynamo_ledger_and_client():
    endpoint, stop = start_moto_server()
    try:
        client = moto_dynamodb(endpoint)
        tables.create_all(client)
        yield DynamoQuotaLedger(client, clock=FakeClock(T0)), client
    finally:
        stop()


@pytest.fixture(params=["dynamodb", "memory"])
def service(request, dynamo_ledger_and_client):
    """(service, ledger, what the store holds)."""
    ledger, client = dynamo_ledger_and_client
    if request.param == "memory":
        ledger = client = InMemoryQuotaLedger()
    return QuotaService(ledger, clock=FakeClock(T0)), ledger, QuotaTable(client, FakeClock(T0))


def used(service, key):
    return service[2].usage_of(f"key#{key}", "tokens_per_day")


def test_a_top_up_grows_the_same_windows_until_the_limit_and_settlement_refunds_the_rest(service):
    quota, ledger, table = service
    reservation = quota.reserve(
        ReservationRequest(
            "r-grow-" + type(ledger).__name__, "k-grow-" + type(ledger).__name__, "t", LIMITS, {}, 100, 300, 0.001
        )
    )
    key = reservation.charges[0].scope_id
    assert used(service, key) == 400
    assert quota.top_up(reservation, 500, 0.001) is True
    assert used(service, key) == 900
    assert reserved(reservation, "tokens") == 900
    assert quota.top_up(reservation, 200, 0.001) is False  # 900 + 200 > 1000: refused, nothing changed
    assert used(service, key) == 900
    assert quota.top_up(reservation, 100, 0.001) is True  # exactly to the limit
    assert used(service, key) == 1000
    item = table.get_reservation(reservation.request_id)
    assert (
        item["topped_up"]["tokens"] == 600
        if isinstance(ledger, InMemoryQuotaLedger)
        else item["topped_up_tokens"] == 600
    )
    assert quota.settle(reservation, 100, 650, 0.0005) is True
    assert used(service, key) == 750
    assert quota.top_up(reservation, 10, 0.0) is False  # a settled reservation never grows


def test_racing_top_ups_never_pass_the_limit(service):
    quota, ledger, _ = service
    suffix = type(ledger).__name__
    reservations = [
        quota.reserve(ReservationRequest(f"r-race-{suffix}-{i}", f"k-race-{suffix}", "t", LIMITS, {}, 10, 10, 0.0))
        for i in range(20)
    ]  # 400 of 1000 reserved
    with ThreadPoolExecutor(max_workers=20) as pool:
        granted = list(pool.map(lambda r: quota.top_up(r, 50, 0.0), reservations))
    assert sum(granted) == 12  # (1000 - 400) / 50
    assert used(service, f"k-race-{suffix}") == 1000
