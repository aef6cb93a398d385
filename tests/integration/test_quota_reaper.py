"""The reservation reaper on moto: abandoned reservations are expired (charge kept), fresh and
settled ones are left alone, and it reads only the sparse index of open reservations."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from moto import mock_aws

from quotagate import tables
from quotagate.quota import DynamoQuotaLedger, QuotaService, ReservationRequest, ReservationStatus
from quotagate.quota.reaper import ReservationReaper
from tests.helpers import FakeClock
from tests.quota_table import QuotaTable

T0 = 1_800_000_030.0
MAX_REQUEST = 870.0
MARGIN = 600.0
LIMITS = {"tokens_per_month": 100_000}


class Recording:
    """Counts the operations the reaper sends (it must never scan)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.operations: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.operations.append(name)
        return getattr(self.real, name)


@pytest.fixture
def client(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        dynamodb = boto3.client("dynamodb")
        tables.create_all(dynamodb)
        yield dynamodb


def test_the_reaper_expires_an_abandoned_reservation_and_leaves_a_fresh_one(client):
    clock = FakeClock(T0)
    ledger = DynamoQuotaLedger(client, clock=clock)
    service = QuotaService(ledger, clock=clock)
    table = QuotaTable(client, clock)
    abandoned = service.reserve(ReservationRequest("abandoned", "k1", "acme", LIMITS, {}, 40, 60, 0.0))
    settled = service.reserve(ReservationRequest("settled", "k1", "acme", LIMITS, {}, 40, 60, 0.0))
    service.settle(settled, 10, 10, 0.0)
    clock.now = T0 + MAX_REQUEST + MARGIN - 5
    fresh = service.reserve(ReservationRequest("fresh", "k1", "acme", LIMITS, {}, 40, 60, 0.0))
    assert table.usage_of("key#k1", "tokens_per_month") == 100 + 20 + 100

    clock.now = T0 + MAX_REQUEST + MARGIN + 1
    recording = Recording(client)
    reaper = ReservationReaper(recording, max_request_seconds=MAX_REQUEST, margin_seconds=MARGIN, clock=clock)
    result = reaper.reap()

    assert result.expired == 1
    assert table.get_reservation("abandoned")["status"] == ReservationStatus.EXPIRED
    assert table.get_reservation("fresh")["status"] == ReservationStatus.RESERVED
    assert table.get_reservation("settled")["status"] == ReservationStatus.SETTLED
    # The charge is kept: the provider may have billed the whole reservation.
    assert table.usage_of("key#k1", "tokens_per_month") == 220
    assert "scan" not in recording.operations and set(recording.operations) <= {"query", "update_item"}

    # A late settlement of the expired reservation changes nothing; the fresh one settles normally.
    assert service.settle(abandoned, 1, 1, 0.0) is False
    assert service.settle(fresh, 5, 5, 0.0) is True
    assert table.usage_of("key#k1", "tokens_per_month") == 100 + 20 + 10
    # Nothing is left for the next run.
    assert reaper.reap().expired == 0


def test_only_open_reservations_are_in_the_reaper_index(client):
    clock = FakeClock(T0)
    service = QuotaService(DynamoQuotaLedger(client, clock=clock), clock=clock)
    for i in range(5):
        reservation = service.reserve(ReservationRequest(f"r{i}", "k1", "acme", LIMITS, {}, 1, 1, 0.0))
        if i % 2 == 0:
            service.settle(reservation, 1, 1, 0.0)
    index = tables.RESERVED_INDEX
    items = []
    for shard in range(8):
        items += client.query(
            TableName=tables.QUOTA.name(),
            IndexName=index.name,
            KeyConditionExpression="#s = :s",
            ExpressionAttributeNames={"#s": index.partition_key},
            ExpressionAttributeValues={":s": {"S": f"r{shard}"}},
        )["Items"]
    assert sorted(item["pk"]["S"] for item in items) == ["req#r1", "req#r3"]


def test_an_abandoned_requests_concurrency_slot_frees_with_its_lease_and_the_reaper_keeps_its_charge(client):
    from quotagate.errors import GatewayError

    clock = FakeClock(T0)
    ledger = DynamoQuotaLedger(client, clock=clock)
    service = QuotaService(ledger, clock=clock)
    table = QuotaTable(client, clock)
    limits = {"max_concurrent_requests": 1, "tokens_per_month": 100_000}
    service.reserve(ReservationRequest("crashed", "k1", "acme", limits, {}, 40, 60, 0.0))  # its environment dies
    clock.now = T0 + 30
    with pytest.raises(GatewayError) as refused:
        service.reserve(ReservationRequest("blocked", "k1", "acme", limits, {}, 40, 60, 0.0))
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.headers["retry-after"] == "30"  # the dead holder's lease ends at T0 + 60

    clock.now = T0 + 61  # the lease ran out: the slot is back, long before any reaper run
    assert table.usage_of("key#k1", "max_concurrent_requests") == 0
    admitted = service.reserve(ReservationRequest("next", "k1", "acme", limits, {}, 40, 60, 0.0))
    assert table.usage_of("key#k1", "max_concurrent_requests") == 1

    clock.now = T0 + MAX_REQUEST + MARGIN + 1
    reaper = ReservationReaper(client, max_request_seconds=MAX_REQUEST, margin_seconds=MARGIN, clock=clock)
    assert reaper.reap().expired == 1  # "crashed"
    assert table.usage_of("key#k1", "tokens_per_month", at=T0) == 200  # its charge is kept
    service.settle(admitted, 10, 10, 0.0)
    assert table.usage_of("key#k1", "tokens_per_month", at=T0) == 120
