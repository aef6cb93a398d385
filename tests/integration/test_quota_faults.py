"""Fault injection on the quota ledger's DynamoDB client (a wrapper around a real moto client).

Faults: timeouts, InternalServerError, throttling on every call, and a write that commits but
whose answer is lost. What must hold: no reservation left ``reserved``, nothing applied twice, and
a bound on calls and (fake) time. Time is a fake clock advanced by the injected faults and by the
ledger's sleeps: calls are counted, wall time is never measured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from moto import mock_aws

from quotagate import aws, tables
from quotagate.errors import GatewayError
from quotagate.quota import DynamoQuotaLedger, LedgerBusy, QuotaService, ReservationRequest, ReservationStatus
from quotagate.quota.settlements import InMemorySettlementQueue
from tests.helpers import FakeClock
from tests.quota_table import QuotaTable

if TYPE_CHECKING:
    from collections.abc import Callable

T0 = 1_800_000_030.0
KEY_LIMITS = {"tokens_per_day": 1000, "requests_per_minute": 10}


def throttled(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, operation)


def internal(operation: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "InternalServerError", "Message": "Internal server error"},
            "ResponseMetadata": {"HTTPStatusCode": 500},
        },
        operation,
    )


class FaultyClient:
    """Forwards to the real client; ``fault(operation, call_number, request)`` returns None (pass),
    ``"lost"`` (perform the call, then time out), or an exception to raise without calling."""

    def __init__(self, real: Any, clock: FakeClock, fault: Callable[[str, int, dict], Any]) -> None:
        self.real = real
        self.clock = clock
        self.fault = fault
        self.calls: list[tuple[str, dict]] = []

    def _call(self, operation: str, **request: Any) -> Any:
        self.calls.append((operation, request))
        verdict = self.fault(operation, len(self.calls), request)
        if verdict is None:
            return getattr(self.real, operation)(**request)
        if verdict == "lost":
            getattr(self.real, operation)(**request)
            self.clock.now += aws.QUOTA_READ_TIMEOUT
            raise ReadTimeoutError(endpoint_url="https://dynamodb.test")
        if isinstance(verdict, ReadTimeoutError):
            self.clock.now += aws.QUOTA_READ_TIMEOUT
        raise verdict

    def transact_write_items(self, **request: Any) -> Any:
        return self._call("transact_write_items", **request)

    def update_item(self, **request: Any) -> Any:
        return self._call("update_item", **request)

    def batch_get_item(self, **request: Any) -> Any:
        return self._call("batch_get_item", **request)

    def get_item(self, **request: Any) -> Any:
        return self.real.get_item(**request)  # the test's own reads are never faulty

    def calls_of(self, operation: str) -> int:
        return sum(1 for name, _ in self.calls if name == operation)


@pytest.fixture
def real_client(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("dynamodb")
        tables.create_all(client)
        yield client


@pytest.fixture
def clock():
    return FakeClock(T0)


def setup(real_client, clock, fault, queue=None):
    faulty = FaultyClient(real_client, clock, fault)
    ledger = DynamoQuotaLedger(faulty, clock=clock, sleep=clock.sleep)
    service = QuotaService(ledger, clock=clock, settlement_queue=queue)
    truth = QuotaTable(real_client, clock)  # the table as it is, read past the faults
    return faulty, ledger, service, truth


def reserve(service, request_id="r1"):
    return service.reserve(ReservationRequest(request_id, "k1", "acme", KEY_LIMITS, {}, 40, 60, 0.0))


def tokens_used(truth):
    return truth.usage_of("key#k1", "tokens_per_day")


def is_reserve(operation, request):
    return operation == "transact_write_items" and "Put" in request["TransactItems"][-1]


def is_settle(operation, request):
    return operation == "update_item" or (
        operation == "transact_write_items" and "Put" not in request["TransactItems"][-1]
    )


# ---- reserve ------------------------------------------------------------------------------------


def test_a_throttled_table_refuses_within_two_seconds_and_a_few_calls(real_client, clock):
    faulty, _, service, truth = setup(real_client, clock, lambda op, n, req: throttled(op))
    with pytest.raises(GatewayError) as refused:
        reserve(service)
    assert refused.value.status == 503 and refused.value.code == "quota_store_busy"
    assert refused.value.headers["retry-after"]
    assert clock.now - T0 <= 2.0
    assert len(faulty.calls) <= 5
    assert len(clock.sleeps) == len(faulty.calls) - 1  # no sleep after the last attempt
    assert truth.get_reservation("r1") is None and tokens_used(truth) == 0


def test_the_quota_client_makes_one_botocore_attempt_with_short_timeouts():
    config = aws.quota_config()
    assert config.retries["total_max_attempts"] == 1
    assert config.connect_timeout + config.read_timeout <= 1.0


def test_a_reservation_whose_answer_was_lost_is_retried_with_the_same_token(real_client, clock):
    faulty, _, service, truth = setup(real_client, clock, lambda op, n, req: "lost" if n == 1 else None)
    reservation = reserve(service)
    transactions = [req for op, req in faulty.calls if op == "transact_write_items"]
    assert len(transactions) == 2
    assert transactions[0]["ClientRequestToken"] == transactions[1]["ClientRequestToken"]
    assert transactions[0] == transactions[1]  # idempotent: the very same request
    assert tokens_used(truth) == 100  # charged once
    assert service.settle(reservation, 10, 20, 0.0) is True
    assert tokens_used(truth) == 30
    assert truth.get_reservation("r1")["status"] == ReservationStatus.SETTLED


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not-committed"])
def test_an_unknown_reserve_outcome_is_compensated_before_the_client_hears(real_client, clock, committed):
    def fault(op, n, req):
        if is_reserve(op, req):
            if n == 1:
                return "lost" if committed else ReadTimeoutError(endpoint_url="https://dynamodb.test")
            return internal(op)
        return None

    _faulty, _, service, truth = setup(real_client, clock, fault)
    with pytest.raises(GatewayError) as refused:
        reserve(service)
    assert refused.value.status == 503 and refused.value.code == "quota_store_unavailable"
    assert refused.value.headers["retry-after"]
    record = truth.get_reservation("r1")
    if committed:
        assert record["status"] == ReservationStatus.SETTLED  # released by the compensating settle
    else:  # a tombstone: the reservation, should it still arrive, is refused by its own condition
        assert record["status"] == ReservationStatus.CANCELLED
    assert tokens_used(truth) == 0
    assert clock.now - T0 <= 2.0 + aws.QUOTA_READ_TIMEOUT + aws.QUOTA_CONNECT_TIMEOUT


def test_when_even_the_compensation_fails_it_is_queued_and_applied_once(real_client, clock):
    broken = {"on": True}

    def fault(op, n, req):
        if not broken["on"]:
            return None
        return "lost" if n == 1 else internal(op)

    queue = InMemorySettlementQueue()
    _faulty, ledger, service, truth = setup(real_client, clock, fault, queue)
    with pytest.raises(GatewayError):
        reserve(service)
    assert tokens_used(truth) == 100  # committed, not yet compensated
    assert len(queue.messages) == 1
    broken["on"] = False
    assert queue.drain(ledger) == 1
    assert tokens_used(truth) == 0
    assert truth.get_reservation("r1")["status"] == ReservationStatus.SETTLED


def test_a_duplicate_delivery_of_a_queued_settlement_applies_once(real_client, clock):
    broken = {"on": False}
    queue = InMemorySettlementQueue()
    _faulty, ledger, service, truth = setup(
        real_client, clock, lambda op, n, req: internal(op) if broken["on"] else None, queue
    )
    reservation = reserve(service)
    broken["on"] = True
    assert service.settle(reservation, 10, 20, 0.0) is True  # accepted by the queue
    assert tokens_used(truth) == 100
    broken["on"] = False
    (message,) = queue.messages
    queue.messages.append(message)  # SQS delivers at least once
    assert queue.drain(ledger) == 2
    assert tokens_used(truth) == 30
    assert truth.get_reservation("r1")["usage"]["completion_tokens"] == 20


# ---- settle -------------------------------------------------------------------------------------


def test_a_settlement_whose_answer_was_lost_reports_success(real_client, clock):
    lose_next_settle = {"on": False}

    def fault(op, n, req):
        if lose_next_settle["on"] and is_settle(op, req):
            lose_next_settle["on"] = False
            return "lost"
        return None

    _faulty, _, service, truth = setup(real_client, clock, fault)
    reservation = reserve(service)
    lose_next_settle["on"] = True
    assert service.settle(reservation, 10, 20, 0.0) is True  # not a failure: it did commit
    assert tokens_used(truth) == 30  # applied once
    assert truth.get_reservation("r1")["status"] == ReservationStatus.SETTLED


def test_a_throttled_settlement_is_bounded_then_queued(real_client, clock):
    broken = {"on": False}
    queue = InMemorySettlementQueue()
    faulty, ledger, service, truth = setup(
        real_client, clock, lambda op, n, req: throttled(op) if broken["on"] else None, queue
    )
    reservation = reserve(service)
    broken["on"] = True
    calls_before, started = len(faulty.calls), clock.now
    service.settle(reservation, 10, 20, 0.0)
    settle_calls = len(faulty.calls) - calls_before
    assert settle_calls <= 8
    assert clock.now - started <= 5.0
    assert len(queue.messages) == 1
    assert truth.get_reservation("r1")["status"] == ReservationStatus.RESERVED
    broken["on"] = False
    queue.drain(ledger)
    assert tokens_used(truth) == 30
    assert truth.get_reservation("r1")["status"] == ReservationStatus.SETTLED


def test_without_a_queue_a_failed_settlement_raises_and_keeps_the_charge(real_client, clock):
    broken = {"on": False}
    _faulty, _, service, truth = setup(real_client, clock, lambda op, n, req: internal(op) if broken["on"] else None)
    reservation = reserve(service)
    broken["on"] = True
    with pytest.raises(LedgerBusy):
        service.settle(reservation, 10, 20, 0.0)
    assert tokens_used(truth) == 100  # the safe side: never under-counted


def test_without_a_queue_a_failed_compensation_is_still_a_clean_503(real_client, clock):
    _, _, service, truth = setup(real_client, clock, lambda op, n, req: "lost" if n == 1 else internal(op))
    with pytest.raises(GatewayError) as refused:
        reserve(service)
    assert refused.value.status == 503
    # Left for the reaper, which expires it (charge kept) once no request can still be running.
    assert truth.get_reservation("r1")["status"] == ReservationStatus.RESERVED
