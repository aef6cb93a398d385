"""Quotas on DynamoDB semantics, through a single-threaded moto server (one request at a time, like
DynamoDB's per-item atomicity). These tests prove the core promise: concurrency never pushes a
window past its limit, a rejected request keeps nothing, and settlement happens exactly once."""

import random
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config

from quotagate import tables
from quotagate.errors import GatewayError
from quotagate.quota import DynamoQuotaLedger, QuotaService, Reservation, ReservationRequest
from quotagate.quota.service import RETRY_JITTER_SECONDS
from quotagate_tools.local.motoserver import reset_moto_server, start_moto_server
from tests.helpers import FakeClock
from tests.quota_table import QuotaTable


def reserved(reservation: Reservation, unit: str) -> int:
    """The largest amount reserved in any window of a unit (tokens, usd micros)."""
    return max((c.amount for c in reservation.charges if c.unit == unit), default=0)


pytestmark = pytest.mark.timeout(30)

T0 = datetime(2026, 11, 17, 10, 5, 30, tzinfo=UTC).timestamp()


def moto_dynamodb(endpoint: str, **options: Any) -> Any:
    """A DynamoDB client of the moto server at ``endpoint``, with dummy credentials."""
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        **options,
    )


@pytest.fixture(scope="module")
def dynamodb():
    endpoint, stop = start_moto_server()
    try:
        reset_moto_server(endpoint)
        client = moto_dynamodb(
            endpoint, config=Config(max_pool_connections=64, retries={"mode": "standard", "max_attempts": 5})
        )
        tables.create_all(client)
        yield client
    finally:
        stop()


@pytest.fixture
def clock():
    return FakeClock(T0)


@pytest.fixture
def ledger(dynamodb):
    return DynamoQuotaLedger(dynamodb)


@pytest.fixture
def service(ledger, clock):
    return QuotaService(ledger, clock=clock)


@pytest.fixture
def table(dynamodb, clock):
    return QuotaTable(dynamodb, clock)


@pytest.fixture
def ids():
    suffix = uuid.uuid4().hex[:8]
    return {"key": f"key-{suffix}", "key2": f"key2-{suffix}", "tenant": f"tenant-{suffix}"}


def run_at_once(count: int, job: Callable[[int], object]) -> list[object]:
    """Run ``job(i)`` on ``count`` threads released together; returns results or exceptions."""
    barrier = threading.Barrier(count)

    def call(i: int) -> object:
        barrier.wait()
        try:
            return job(i)
        except Exception as error:
            return error

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


def split(results):
    admitted = [r for r in results if isinstance(r, Reservation)]
    rejected = [r for r in results if not isinstance(r, Reservation)]
    for error in rejected:
        assert isinstance(error, GatewayError), repr(error)
        assert error.status == 429
    return admitted, rejected


def settle_all_randomly(service, admitted, rng, usd=False):
    """Settle every reservation concurrently with a random actual <= reserved; returns the sums."""
    plans = []
    for reservation in admitted:
        reserved_tokens = reserved(reservation, "tokens")
        prompt = rng.randint(0, reserved_tokens)
        completion = rng.randint(0, reserved_tokens - prompt)
        micros = rng.randint(0, reserved(reservation, "usd")) if usd else 0
        plans.append((reservation, prompt, completion, micros))
    results = run_at_once(
        len(plans), lambda i: service.settle(plans[i][0], plans[i][1], plans[i][2], plans[i][3] / 1e6)
    )
    assert results == [True] * len(plans)
    return sum(p + c for _, p, c, _ in plans), sum(m for *_, m in plans)


# ---- (i) tokens -----------------------------------------------------------------------------------


def test_concurrent_token_reservations_never_overshoot_and_settle_exactly(service, ids, table):
    limits = {"tokens_per_minute": 1000}
    results = run_at_once(
        50,
        lambda i: service.reserve(
            ReservationRequest(f"tok-{ids['key']}-{i}", ids["key"], ids["tenant"], limits, {}, 40, 60, 0.0)
        ),
    )
    admitted, rejected = split(results)
    assert len(admitted) == 1000 // 100
    assert len(rejected) == 40
    assert {(e.code, e.type) for e in rejected} == {("rate_limit_exceeded", "tokens")}
    assert all(1 <= int(e.headers["retry-after"]) <= 30 + RETRY_JITTER_SECONDS for e in rejected)
    assert table.usage_of(f"key#{ids['key']}", "tokens_per_minute") == 1000

    tokens, _ = settle_all_randomly(service, admitted, random.Random(1))
    assert table.usage_of(f"key#{ids['key']}", "tokens_per_minute") == tokens
    for reservation in admitted:
        assert table.get_reservation(reservation.request_id)["status"] == "settled"


def test_concurrent_random_sizes_fill_at_most_the_limit(service, ids, table):
    rng = random.Random(2)
    sizes = [(rng.randint(0, 100), rng.randint(1, 100)) for _ in range(60)]
    limits = {"tokens_per_minute": 1000, "requests_per_minute": 1000}
    results = run_at_once(
        60,
        lambda i: service.reserve(
            ReservationRequest(
                f"rnd-{ids['key']}-{i}", ids["key"], ids["tenant"], limits, {}, sizes[i][0], sizes[i][1], 0.0
            )
        ),
    )
    admitted, rejected = split(results)
    assert rejected, "the test should saturate the window"
    total_reserved = sum(reserved(r, "tokens") for r in admitted)
    used = table.usage_of(f"key#{ids['key']}", "tokens_per_minute")
    assert used == total_reserved <= 1000
    assert table.usage_of(f"key#{ids['key']}", "requests_per_minute") == len(admitted)
    # Every rejected request really did not fit in what was left.
    smallest_rejected = min(sizes[i][0] + sizes[i][1] for i, r in enumerate(results) if isinstance(r, GatewayError))
    assert used + smallest_rejected > 1000


# ---- (ii) dollars ---------------------------------------------------------------------------------


def test_concurrent_usd_reservations_never_overshoot_and_settle_exactly(service, ids, table):
    limits = {"usd_per_day": 1.0, "tokens_per_minute": 1_000_000}
    results = run_at_once(
        50,
        lambda i: service.reserve(
            ReservationRequest(f"usd-{ids['key']}-{i}", ids["key"], ids["tenant"], limits, {}, 40, 60, 0.05)
        ),
    )
    admitted, rejected = split(results)
    assert len(admitted) == 20 and len(rejected) == 30
    assert {(e.code, e.type) for e in rejected} == {("insufficient_quota", "usd")}
    assert table.usage_of(f"key#{ids['key']}", "usd_per_day") == 1_000_000

    tokens, micros = settle_all_randomly(service, admitted, random.Random(3), usd=True)
    assert table.usage_of(f"key#{ids['key']}", "usd_per_day") == micros
    assert table.usage_of(f"key#{ids['key']}", "tokens_per_minute") == tokens


# ---- (iii) a tenant limit shared by two keys ------------------------------------------------------


def test_tenant_limit_is_shared_exactly_by_two_keys(service, ids, table):
    key_limits = {"tokens_per_minute": 800}
    tenant_limits = {"tokens_per_minute": 1000}

    def job(i):
        key = ids["key"] if i % 2 == 0 else ids["key2"]
        return service.reserve(
            ReservationRequest(f"ten-{ids['tenant']}-{i}", key, ids["tenant"], key_limits, tenant_limits, 40, 60, 0)
        )

    results = run_at_once(50, job)
    admitted, rejected = split(results)
    assert len(admitted) == 10 and len(rejected) == 40
    assert table.usage_of(f"tenant#{ids['tenant']}", "tokens_per_minute") == 1000
    per_key = {k: table.usage_of(f"key#{ids[k]}", "tokens_per_minute") for k in ("key", "key2")}
    assert sum(per_key.values()) == 1000 and max(per_key.values()) <= 800

    rng = random.Random(4)
    actual = {}
    for reservation in admitted:
        prompt, completion = rng.randint(0, 40), rng.randint(0, 60)
        key = reservation.charges[0].scope_id
        actual[key] = actual.get(key, 0) + prompt + completion
        assert service.settle(reservation, prompt, completion, 0)
    assert table.usage_of(f"tenant#{ids['tenant']}", "tokens_per_minute") == sum(actual.values())
    for name in ("key", "key2"):
        assert table.usage_of(f"key#{ids[name]}", "tokens_per_minute") == actual.get(ids[name], 0)


# ---- (iv) all or nothing across windows -----------------------------------------------------------


def test_a_short_window_keeps_no_partial_reservation_anywhere(service, ids, table):
    key_limits = {
        "requests_per_minute": 10,
        "tokens_per_minute": 10_000,
        "tokens_per_day": 1000,
        "usd_per_day": 1,
    }
    tenant_limits = {"tokens_per_month": 100_000, "usd_per_month": 5}
    first = service.reserve(
        ReservationRequest("multi-1-" + ids["key"], ids["key"], ids["tenant"], key_limits, tenant_limits, 400, 500, 0.1)
    )
    snapshot = {c.item_key: table.get_used(c.pk, c.sk) for c in first.charges}
    assert set(snapshot.values()) == {1, 900, 100_000}

    with pytest.raises(GatewayError) as err:
        service.reserve(
            ReservationRequest(
                "multi-2-" + ids["key"], ids["key"], ids["tenant"], key_limits, tenant_limits, 100, 100, 0.1
            )
        )
    error = err.value
    assert error.status == 429 and error.code == "insufficient_quota" and "tokens_per_day" in error.message
    # The short window's used value came back with the failed transaction (ALL_OLD), no extra read.
    assert error.headers["x-ratelimit-limit-tokens"] == "1000"
    assert error.headers["x-ratelimit-remaining-tokens"] == "100"
    # The headers describe the day window that refused, not the minute windows that did not.
    assert not any(name.endswith("-requests") for name in error.headers)
    assert {c.item_key: table.get_used(c.pk, c.sk) for c in first.charges} == snapshot
    assert table.get_reservation("multi-2-" + ids["key"]) is None


# ---- (v) exactly-once settlement ------------------------------------------------------------------


def test_second_settle_is_a_no_op(service, ids, table):
    limits = {"tokens_per_minute": 1000}
    tenant_limits = {"usd_per_day": 1}
    reservation = service.reserve(
        ReservationRequest("twice-" + ids["key"], ids["key"], ids["tenant"], limits, tenant_limits, 40, 60, 0.01)
    )
    assert reservation.headers()["x-ratelimit-remaining-tokens"] == "900"  # snapshot after the commit
    assert service.settle(reservation, 10, 20, 0.003) is True
    assert service.settle(reservation, 99, 99, 0.5) is False
    # A fresh copy (say, another code path) reaches DynamoDB and is refused there.
    again = Reservation(reservation.request_id, reservation.charges, reservation.usages, reservation.reserved_at)
    assert service.settle(again, 99, 99, 0.5) is False
    assert table.usage_of(f"key#{ids['key']}", "tokens_per_minute") == 30
    assert table.usage_of(f"tenant#{ids['tenant']}", "usd_per_day") == 3000
    record = table.get_reservation(reservation.request_id)
    assert record["status"] == "settled"
    assert record["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "usd_micros": 3000}


def test_concurrent_settles_of_one_request_apply_once(service, ids, table):
    reservation = service.reserve(
        ReservationRequest("race-" + ids["key"], ids["key"], ids["tenant"], {"tokens_per_minute": 1000}, {}, 40, 60, 0)
    )
    copies = [
        Reservation(reservation.request_id, reservation.charges, reservation.usages, reservation.reserved_at)
        for _ in range(10)
    ]
    results = run_at_once(10, lambda i: service.settle(copies[i], 5, 5, 0))
    assert sorted(results) == [False] * 9 + [True]
    assert table.usage_of(f"key#{ids['key']}", "tokens_per_minute") == 10


def test_settle_after_the_window_rolled_over_hits_the_reserved_window(service, clock, ids, table):
    reserved_at = clock.now
    reservation = service.reserve(
        ReservationRequest("roll-" + ids["key"], ids["key"], ids["tenant"], {"tokens_per_minute": 1000}, {}, 40, 60, 0)
    )
    clock.now += 90
    assert service.settle(reservation, 7, 3, 0)
    assert table.usage_of(f"key#{ids['key']}", "tokens_per_minute", at=reserved_at) == 10
    assert table.usage_of(f"key#{ids['key']}", "tokens_per_minute") == 0


def test_moto_server_stop_is_idempotent():
    endpoint, stop = start_moto_server()
    client = moto_dynamodb(endpoint)
    assert "TableNames" in client.list_tables()
    stop()
    stop()


def test_the_harness_does_see_a_check_then_add_race(dynamodb, ids):
    """Guard against a vacuous concurrency test: the same 50 threads with a naive read-then-write
    (the bug of gateways that check before and count after) overshoot on this server."""
    table = tables.QUOTA.name()
    key = {"pk": {"S": f"naive#{ids['key']}"}, "sk": {"S": "tokens_per_minute#x"}}

    def naive(_):
        item = dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item", {})
        if int(item.get("used", {}).get("N", "0")) + 100 > 1000:
            return False
        dynamodb.update_item(
            TableName=table,
            Key=key,
            UpdateExpression="ADD used :n",
            ExpressionAttributeValues={":n": {"N": "100"}},
        )
        return True

    admitted = sum(1 for result in run_at_once(50, naive) if result is True)
    assert admitted > 10
