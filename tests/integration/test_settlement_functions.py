"""The settlement retry consumer and the reaper as Lambda handlers, on moto."""

from __future__ import annotations

import time

import boto3
import pytest
from moto import mock_aws

from quotagate import tables
from quotagate.quota import DynamoQuotaLedger, QuotaService, ReservationRequest, ReservationStatus
from quotagate.quota.settlements import PendingSettlement
from quotagate_tools.local.apigateway import FakeLambdaContext
from tests.quota_table import QuotaTable

LIMITS = {"tokens_per_month": 100_000}


@pytest.fixture
def client(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    with mock_aws():
        dynamodb = boto3.client("dynamodb")
        tables.create_all(dynamodb)
        import functions.settlements.handler as settlements

        settlements.reset()
        yield dynamodb
        settlements.reset()


def sqs_record(message_id: str, body: str) -> dict:
    return {
        "messageId": message_id,
        "receiptHandle": message_id,
        "body": body,
        "attributes": {},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:settlements",
        "awsRegion": "us-east-1",
    }


def test_the_consumer_applies_each_settlement_once_and_reports_only_bad_messages(client):
    from functions.settlements.handler import lambda_handler

    service = QuotaService(DynamoQuotaLedger(client))
    reservation = service.reserve(ReservationRequest("r1", "k1", "acme", LIMITS, {}, 40, 60, 0.0))
    pending = PendingSettlement(
        "r1", tuple((c, 30 - c.amount) for c in reservation.charges), {"prompt_tokens": 10, "completion_tokens": 20}
    )
    event = {
        "Records": [
            sqs_record("m1", pending.to_json()),
            sqs_record("m2", pending.to_json()),
            sqs_record("m3", "not json"),
        ]
    }
    response = lambda_handler(event, FakeLambdaContext("settlements"))
    assert response == {"batchItemFailures": [{"itemIdentifier": "m3"}]}
    assert QuotaTable(client).usage_of("key#k1", "tokens_per_month") == 30
    assert QuotaTable(client).get_reservation("r1")["status"] == ReservationStatus.SETTLED


def test_the_reaper_function_expires_abandoned_reservations(client, monkeypatch):
    from functions.reaper.handler import lambda_handler

    monkeypatch.setenv("QG_MAX_REQUEST_SECONDS", "60")
    monkeypatch.setenv("QG_REAPER_MARGIN_SECONDS", "30")
    old = time.time() - 100
    ledger = DynamoQuotaLedger(client, clock=lambda: old)
    QuotaService(ledger, clock=lambda: old).reserve(ReservationRequest("old", "k1", "acme", LIMITS, {}, 40, 60, 0.0))
    QuotaService(DynamoQuotaLedger(client)).reserve(ReservationRequest("new", "k1", "acme", LIMITS, {}, 40, 60, 0.0))
    assert lambda_handler({}, FakeLambdaContext("reaper")) == {"expired": 1, "skipped": 0}
    assert QuotaTable(client).get_reservation("old")["status"] == ReservationStatus.EXPIRED
    assert QuotaTable(client).get_reservation("new")["status"] == ReservationStatus.RESERVED


def test_local_mode_drains_the_sqs_retry_queue_once(client):
    from quotagate.quota.settlements import SqsSettlementQueue
    from quotagate_tools.local.settlements import create_queue, drain_queue

    sqs = boto3.client("sqs")
    queue_url = create_queue(sqs)
    ledger = DynamoQuotaLedger(client)
    service = QuotaService(ledger)
    reservation = service.reserve(ReservationRequest("r1", "k1", "acme", LIMITS, {}, 40, 60, 0.0))
    pending = PendingSettlement("r1", tuple((c, 30 - c.amount) for c in reservation.charges), {})
    queue = SqsSettlementQueue(sqs, queue_url)
    queue.put(pending)
    queue.put(pending)  # delivered twice
    assert drain_queue(sqs, queue_url, ledger) == 2
    assert QuotaTable(client).usage_of("key#k1", "tokens_per_month") == 30
    assert drain_queue(sqs, queue_url, ledger) == 0
