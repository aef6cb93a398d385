"""Rollup thresholds, period close and expired reservations, on moto served one call at a time
(like DynamoDB's per-item atomicity): exactly one event per threshold, per tenant and period, and
an expired reservation billed at its reservation."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import boto3
import jsonschema
import pytest

from quotagate import tables
from quotagate.quota import ReservationRequest
from quotagate.quota.ledger import DynamoQuotaLedger
from quotagate.quota.service import QuotaService
from quotagate.usage.events import (
    BUDGET_THRESHOLD_CROSSED,
    REQUEST_SETTLED,
    USAGE_PERIOD_CLOSED,
    EventBridgePublisher,
    InMemoryPublisher,
    PublishFailed,
    SettledRequest,
    load_schema,
)
from quotagate.usage.period_close import PeriodCloser
from quotagate.usage.pipe import SCHEMA_VERSION
from quotagate.usage.record import FIELDS, reservation_record, settled_record
from quotagate.usage.rollup import UsageRollup
from quotagate_tools.local.motoserver import reset_moto_server, start_moto_server
from tests.integration.usage_helpers import BusSubscriber, stored_aggregates
from tests.quota_table import QuotaTable

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def aws(monkeypatch):
    url, stop = start_moto_server()
    reset_moto_server(url)  # moto's backends are per process: start from nothing
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    tables.create_all(boto3.client("dynamodb"))
    boto3.client("events").create_event_bus(Name="quotagate")
    subscriber = BusSubscriber(boto3.client("events"), boto3.client("sqs"))
    try:
        yield subscriber
    finally:
        stop()


def detail(
    request_id: str,
    tenant: str = "acme",
    key_id: str = "k1",
    model: str = "mock-gpt",
    prompt: int = 100,
    completion: int = 80,
    micros: int = 500,
    started_at: float | None = None,
    budgets: dict | None = None,
) -> dict:
    """A Request Settled detail as the pipe makes it."""
    record = reservation_record(
        request_id=request_id,
        tenant=tenant,
        consumer="alice",
        key_id=key_id,
        auth_type="api_key",
        plan="free",
        requested_model=model,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=256,
        cost_usd_micros=micros * 2,
        started_at=started_at or datetime.now(UTC).timestamp(),
        budgets=budgets,
    )
    record = settled_record(
        record,
        target="mock/mock-gpt",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd_micros=micros,
        usage_source="provider",
        outcome="ok",
        http_status=200,
        time_to_first_byte_ms=10,
        duration_ms=20,
        failovers=0,
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "settled",
        **{k: str(int(record[k])) if kind == "N" else str(record[k]) for k, kind in FIELDS.items()},
    }


def settled(request_id: str, **fields) -> SettledRequest:
    return SettledRequest.parse(detail(request_id, **fields))


def test_fifty_concurrent_settlements_crossing_80_percent_publish_exactly_one_event(aws):
    # Key budget 10,000 tokens a day; 50 settlements of 180 tokens = 9,000 (90 %): 50 % and 80 % are
    # crossed once each, however the 50 rollups interleave; 100 % is not reached.
    client = boto3.client("dynamodb")
    publisher = EventBridgePublisher(boto3.client("events"))
    budgets = {"budget_key_tokens_per_day": 10_000}
    events = [settled(f"r{i}", budgets=budgets) for i in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        applied = list(pool.map(lambda e: UsageRollup(client, publisher).apply(e), events))
    assert all(a.applied for a in applied)
    crossed = aws.of_type(BUDGET_THRESHOLD_CROSSED)
    assert sorted(e["detail"]["threshold_percent"] for e in crossed) == [50, 80]
    schema = load_schema(BUDGET_THRESHOLD_CROSSED)
    for event in crossed:
        jsonschema.validate(event["detail"], schema)
        assert (event["detail"]["scope"], event["detail"]["key_id"], event["detail"]["limit"]) == (
            "key",
            "k1",
            "tokens_per_day",
        )
        assert event["detail"]["used"] >= event["detail"]["budget"] * event["detail"]["threshold_percent"] // 100
    # Every one of them delivered again: nothing more.
    with ThreadPoolExecutor(max_workers=10) as pool:
        again = list(pool.map(lambda e: UsageRollup(client, publisher).apply(e), events))
    assert not any(a.applied for a in again)
    assert len(aws.of_type(BUDGET_THRESHOLD_CROSSED)) == 2
    totals = stored_aggregates(client)[
        (
            "tenant#acme#key#k1",
            next(sk for pk, sk in stored_aggregates(client) if pk == "tenant#acme#key#k1" and sk.startswith("day#")),
        )
    ]
    assert totals["total_tokens"] == 9_000 and totals["requests"] == 50


def test_a_failed_publish_is_withdrawn_and_published_by_the_retry(aws):
    client = boto3.client("dynamodb")
    publisher = InMemoryPublisher()
    publisher.fail = 1
    event = settled("big", prompt=600, completion=0, budgets={"budget_tenant_tokens_per_day": 1000})
    with pytest.raises(PublishFailed):
        UsageRollup(client, publisher).apply(event)
    assert publisher.events == []
    retried = UsageRollup(client, publisher).apply(event)  # SQS delivers the message again
    assert not retried.applied  # the increments were already in: not counted twice
    assert [d["threshold_percent"] for _, d in publisher.events] == [50]
    UsageRollup(client, publisher).apply(event)
    assert len(publisher.events) == 1


def test_period_close_twice_emits_one_event_per_tenant_and_period(aws):
    client = boto3.client("dynamodb")
    rollup = UsageRollup(client, InMemoryPublisher())
    day = datetime(2026, 10, 31, 12, tzinfo=UTC).timestamp()
    for i in range(4):
        rollup.apply(settled(f"a{i}", tenant="acme", started_at=day + i, prompt=10, completion=5, micros=7))
    for i in range(3):
        rollup.apply(settled(f"g{i}", tenant="globex", started_at=day + i, prompt=1, completion=2, micros=3))
    publisher = EventBridgePublisher(boto3.client("events"))
    closer = PeriodCloser(client, publisher, grace_seconds=7200)
    # 2026-11-01 01:00: the day ended an hour ago, inside the grace period: nothing yet.
    assert closer.run(now=datetime(2026, 11, 1, 1, tzinfo=UTC).timestamp()) == []
    now = datetime(2026, 11, 1, 3, tzinfo=UTC).timestamp()
    first = closer.run(now=now)
    assert sorted((c.tenant, str(c.granularity), c.period) for c in first) == [
        ("acme", "day", "2026-10-31"),
        ("acme", "month", "2026-10"),
        ("globex", "day", "2026-10-31"),
        ("globex", "month", "2026-10"),
    ]
    assert closer.run(now=now) == []  # a second run: nothing new
    assert PeriodCloser(client, publisher, grace_seconds=7200).run(now=now + 3600) == []
    closed = aws.of_type(USAGE_PERIOD_CLOSED)
    assert len(closed) == 4
    schema = load_schema(USAGE_PERIOD_CLOSED)
    by_key = {(e["detail"]["tenant"], e["detail"]["granularity"]): e["detail"] for e in closed}
    for detail in by_key.values():
        jsonschema.validate(detail, schema)
    acme = by_key[("acme", "day")]
    assert (acme["requests"], acme["prompt_tokens"], acme["completion_tokens"], acme["usd_micros"]) == (4, 40, 20, 28)
    assert acme["requests_by_outcome"] == {
        "ok": 4,
        "upstream_error": 0,
        "client_disconnect": 0,
        "timeout": 0,
        "error_event": 0,
        "expired": 0,
    }
    assert (acme["period_start"], acme["period_end"]) == ("2026-10-31T00:00:00Z", "2026-11-01T00:00:00Z")
    assert by_key[("globex", "month")]["total_tokens"] == 9


def test_an_expired_reservation_becomes_a_request_settled_event_billed_at_its_reservation(aws):
    from functions.usage_rollup.handler import lambda_handler, reset
    from quotagate_tools.local.usage_pipeline import LocalUsagePipeline

    reset()
    client = boto3.client("dynamodb")
    service = QuotaService(DynamoQuotaLedger(client))
    fields = {
        "tenant": "acme",
        "consumer": "alice",
        "key_id": "k9",
        "auth_type": "api_key",
        "plan": "free",
        "requested_model": "mock-gpt",
        "model": "mock-gpt",
    }
    service.reserve(
        ReservationRequest(
            "abandoned", "k9", "acme", {"tokens_per_day": 10_000}, {}, 40, 200, 0.0012, usage_fields=fields
        )
    )
    # What the reaper does to a reservation whose environment died: expired, charge kept.
    client.update_item(
        TableName=tables.QUOTA.name(),
        Key={"pk": {"S": "req#abandoned"}, "sk": {"S": "reservation"}},
        UpdateExpression="SET #s = :expired",
        ConditionExpression="#s = :reserved",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":expired": {"S": "expired"}, ":reserved": {"S": "reserved"}},
    )
    pipeline = LocalUsagePipeline.from_boto(lambda_handler)
    pipeline.setup()
    pipeline.drain()
    (event,) = aws.of_type(REQUEST_SETTLED)
    detail = event["detail"]
    jsonschema.validate(detail, load_schema(REQUEST_SETTLED))
    assert (detail["status"], detail["usage_source"], detail["outcome"]) == ("expired", "reservation", "expired")
    assert (detail["prompt_tokens"], detail["completion_tokens"], detail["cost_usd_micros"]) == ("40", "200", "1200")
    day = next(v for (pk, sk), v in stored_aggregates(client).items() if pk == "tenant#acme" and sk.startswith("day#"))
    assert (day["requests"], day["total_tokens"], day["usd_micros"], day["outcome_expired"]) == (1, 240, 1200, 1)
    reset()


def test_an_invalid_event_fails_its_record_only(aws):
    from functions.usage_rollup.handler import lambda_handler, reset
    from quotagate_tools.local.apigateway import FakeLambdaContext
    from quotagate_tools.local.usage_pipeline import sqs_record

    reset()
    valid = {"source": "quotagate", "detail-type": "Request Settled", "detail": detail("fine")}
    invalid = {"source": "quotagate", "detail-type": "Request Settled", "detail": {"schema_version": "99"}}
    records = [
        sqs_record({"MessageId": name, "ReceiptHandle": "r", "Body": json.dumps(body)}, "arn:aws:sqs:::q")
        for name, body in (("ok", valid), ("bad", invalid))
    ]
    response = lambda_handler({"Records": records}, FakeLambdaContext("rollup"))
    assert response == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    assert any(pk == "tenant#acme" for pk, _ in stored_aggregates(boto3.client("dynamodb")))
    reset()


def test_the_settlement_write_carries_the_completed_record(aws):
    from quotagate.usage.record import Settlement, UsageOutcome, UsageSource

    client = boto3.client("dynamodb")
    ledger = DynamoQuotaLedger(client)
    service = QuotaService(ledger)
    fields = {
        "tenant": "acme",
        "consumer": "alice",
        "key_id": "k1",
        "auth_type": "api_key",
        "plan": "free",
        "requested_model": "mock-gpt",
        "model": "mock-gpt",
    }
    for limits in ({"tokens_per_day": 10_000}, {}):  # a transaction with window items, and a lone update
        rid = f"r-{len(limits)}"
        reservation = service.reserve(
            ReservationRequest(rid, "k1", "acme", limits, {}, 40, 200, 0.0012, usage_fields=fields)
        )
        settlement = Settlement(UsageOutcome.ERROR_EVENT, 200, UsageSource.TOKENIZER, "mock/mock-gpt", 12.0, 99.0, 1)
        assert service.settle(reservation, 30, 7, 0.00005, settlement=settlement)
        item = QuotaTable(client).get_reservation(rid)
        assert item["status"] == "settled"
        record = item["usage_record"]
        assert (record["prompt_tokens"], record["completion_tokens"], record["cost_usd_micros"]) == (30, 7, 50)
        assert (record["outcome"], record["usage_source"], record["failovers"]) == ("error_event", "tokenizer", 1)
