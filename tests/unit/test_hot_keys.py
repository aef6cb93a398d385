"""Hot keys and hot tenants on a conflict-faithful store (issue 20): the project's QuotaService and
DynamoQuotaLedger, unchanged, against quotagate_tools.faithful (transactions hold their items,
overlapping ones are cancelled with TransactionConflict, items take 1,000 write units/s)."""

from __future__ import annotations

import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from quotagate.errors import GatewayError
from quotagate.quota import DynamoQuotaLedger, QuotaService, ReservationRequest
from quotagate.quota.ledger import RESERVATION_SK
from quotagate.quota.settlements import InMemorySettlementQueue
from quotagate_tools.faithful import ConflictFaithfulClient, ConflictRules, InMemoryDynamo

TABLE = "quota-test"
GENEROUS_KEY = {"requests_per_minute": 1_000_000, "tokens_per_minute": 10**9, "tokens_per_day": 10**10}
GENEROUS_TENANT = {"tokens_per_day": 10**10}


def faithful(hold=0.02, **rules):
    return ConflictFaithfulClient(InMemoryDynamo(), ConflictRules(hold_seconds=hold, **rules))


def window_totals(store: InMemoryDynamo) -> dict[tuple[str, str], int]:
    """Per window (pk, limit name): the sum of ``used`` over its item(s)."""
    totals: dict[tuple[str, str], int] = {}
    for item in store.items(TABLE):
        pk, sk = re.sub(r"#s\d+$", "", item["pk"]["S"]), item["sk"]["S"]
        if pk.startswith("req#") or "used" not in item:
            continue
        name = sk.split("#")[0]
        totals[(pk, name)] = totals.get((pk, name), 0) + int(item["used"]["N"])
    return totals


def reservation_items(store: InMemoryDynamo) -> list[dict]:
    return [i for i in store.items(TABLE) if i["pk"]["S"].startswith("req#") and i["sk"]["S"] == RESERVATION_SK]


def request(key_id="k1", key_limits=GENEROUS_KEY, tenant_limits=GENEROUS_TENANT, prompt=30, output=70):
    return ReservationRequest(uuid.uuid4().hex, key_id, "acme", key_limits, tenant_limits, prompt, output, 0.0)


def one_request(service: QuotaService, req: ReservationRequest, actual_tokens=(30, 20)) -> int:
    try:
        reservation = service.reserve(req)
    except GatewayError as refused:
        return refused.status
    service.settle(reservation, *actual_tokens, 0.0)
    return 200


def burst(service, requests):
    start = threading.Barrier(len(requests))

    def run(req):
        start.wait()
        return one_request(service, req)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(run, requests))


# ---- the store follows DynamoDB's rules ------------------------------------------------------------


def update(pk, sk="w", n=1):
    return {
        "Update": {
            "TableName": TABLE,
            "Key": {"pk": {"S": pk}, "sk": {"S": sk}},
            "UpdateExpression": "ADD #u :n",
            "ExpressionAttributeNames": {"#u": "used"},
            "ExpressionAttributeValues": {":n": {"N": str(n)}},
        }
    }


def test_an_overlapping_transaction_is_cancelled_with_transaction_conflict_on_the_locked_item():
    client = faithful(hold=0.2)
    first = threading.Thread(target=client.transact_write_items, kwargs={"TransactItems": [update("a")]})
    first.start()
    while not client.calls:
        pass
    import time

    time.sleep(0.05)
    with pytest.raises(ClientError) as err:
        client.transact_write_items(TransactItems=[update("b"), update("a")])
    first.join()
    assert err.value.response["Error"]["Code"] == "TransactionCanceledException"
    reasons = err.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "TransactionConflict"]
    with pytest.raises(ClientError) as single:
        threading.Thread(target=client.transact_write_items, kwargs={"TransactItems": [update("a")]}).start()
        time.sleep(0.05)
        client.update_item(**update("a")["Update"])
    assert single.value.response["Error"]["Code"] == "TransactionConflictException"
    # Nothing of the cancelled transaction was applied.
    assert client.store.get_item(TableName=TABLE, Key={"pk": {"S": "b"}, "sk": {"S": "w"}}) == {}


def test_one_item_takes_at_most_its_write_units_per_second():
    client = faithful(hold=0.0, item_write_units_per_second=10)
    for _ in range(5):  # 2 units each in a transaction
        client.transact_write_items(TransactItems=[update("a")])
    with pytest.raises(ClientError) as err:
        client.transact_write_items(TransactItems=[update("b"), update("a")])
    assert [r["Code"] for r in err.value.response["CancellationReasons"]] == ["None", "ThrottlingError"]
    with pytest.raises(ClientError) as single:
        client.update_item(**update("a")["Update"])
    assert single.value.response["Error"]["Code"] == "ThrottlingException"


def test_a_repeated_client_request_token_is_applied_once():
    client = faithful(hold=0.0)
    client.transact_write_items(TransactItems=[update("a", n=5)], ClientRequestToken="t1")
    client.transact_write_items(TransactItems=[update("a", n=5)], ClientRequestToken="t1")
    item = client.store.get_item(TableName=TABLE, Key={"pk": {"S": "a"}, "sk": {"S": "w"}})["Item"]
    assert item["used"] == {"N": "5"}


# ---- what issue 20 measured ------------------------------------------------------------------------


def service_on(client, **ledger_options):
    return QuotaService(DynamoQuotaLedger(client, TABLE, snapshot_after_reserve=False, **ledger_options))


@pytest.mark.parametrize("hold", [0.01, 0.02])
def test_a_burst_of_25_on_one_key_is_answered_whole_and_exact(hold):
    client = faithful(hold=hold)
    statuses = burst(service_on(client), [request() for _ in range(25)])
    assert statuses.count(200) == 25, statuses
    totals = window_totals(client.store)
    assert totals[("key#k1", "requests_per_minute")] == 25
    assert totals[("key#k1", "tokens_per_minute")] == 25 * 50  # settled usage, not the reservation
    assert totals[("tenant#acme", "tokens_per_day")] == 25 * 50
    assert all(i["status"]["S"] == "settled" for i in reservation_items(client.store))


def test_contention_is_never_reported_as_the_clients_limit():
    # Every transaction on the key's windows conflicts (another holder always has it): no window is
    # anywhere near its limit, so the answer is a retryable 503 with Retry-After, never a 429.
    client = faithful(hold=0.0)
    real = client.transact_write_items

    def always_conflicting(TransactItems, **kw):
        codes = [
            {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
            if a.get("Update", a.get("Put", {}))
            .get("Key", a.get("Put", {}).get("Item", {}))["pk"]["S"]
            .startswith("key#")
            else {"Code": "None"}
            for a in TransactItems
        ]
        if any(c["Code"] != "None" for c in codes):
            from quotagate_tools.faithful.memory import cancelled

            raise cancelled(codes)
        return real(TransactItems=TransactItems, **kw)

    client.transact_write_items = always_conflicting
    with pytest.raises(GatewayError) as err:
        service_on(client, reserve_seconds=0.3, max_attempts=3).reserve(request())
    assert err.value.status == 503
    assert err.value.code != "rate_limit_exceeded"
    assert int(err.value.headers["retry-after"]) >= 1
    assert window_totals(client.store) == {}


@pytest.mark.parametrize(
    "arrive_late",
    [True, False],
    ids=["compensation-lands-first", "reservation-lands-first"],
)
def test_a_reservation_whose_outcome_was_unknown_is_never_charged_after_its_compensation(arrive_late):
    # The reservation's transaction outlives the client's read timeout: either it reaches the store
    # only after the compensation (which must leave something that refuses it), or it holds its items
    # until after the client gave up (the compensation then waits in the retry queue and refunds it).
    client = faithful(hold=0.0)
    client.delay_commits(count=1, commit_after=0.3, client_timeout=0.05, arrive_late=arrive_late)
    queue = InMemorySettlementQueue()
    ledger = DynamoQuotaLedger(
        client, TABLE, snapshot_after_reserve=False, max_attempts=1, reserve_seconds=0.2, settle_seconds=0.2
    )
    service = QuotaService(ledger, settlement_queue=queue)
    with pytest.raises(GatewayError) as err:
        service.reserve(request())
    assert err.value.status == 503 and err.value.code == "quota_store_unavailable"
    client.wait_for_delayed_commits()
    queue.drain(ledger)  # the settlements Lambda's job
    totals = window_totals(client.store)
    assert all(v == 0 for v in totals.values()), totals
    assert [i["status"]["S"] for i in reservation_items(client.store)] in (["settled"], ["cancelled"])


# ---- sharded hot windows: exact at the limit --------------------------------------------------------


def test_a_sharded_window_admits_exactly_its_limit_under_a_burst():
    # 128 requests per minute is split into 2 shards of 64: a burst of 160 gets exactly 128 through,
    # and each of the other 32 is a 429 that names a window that is really full.
    client = faithful(hold=0.002)
    limits = {"requests_per_minute": 128}
    service = service_on(client)
    statuses = burst(service, [request(key_limits=limits, tenant_limits={}) for _ in range(160)])
    assert statuses.count(200) == 128 and statuses.count(429) == 32, statuses
    assert window_totals(client.store) == {("key#k1", "requests_per_minute"): 128}
    assert len({i["pk"]["S"] for i in client.store.items(TABLE) if i["pk"]["S"].startswith("key#k1")}) == 2


def test_a_request_larger_than_any_shards_room_is_taken_from_several_and_refused_only_when_the_window_is_spent():
    client = faithful(hold=0.0)
    service = service_on(client)
    limits = {"tokens_per_minute": 2 * 262_144}  # 2 shards of 262,144
    held = [service.reserve(request(key_limits=limits, tenant_limits={}, prompt=0, output=100_000)) for _ in range(3)]
    big = service.reserve(request(key_limits=limits, tenant_limits={}, prompt=0, output=200_000))
    assert window_totals(client.store) == {("key#k1", "tokens_per_minute"): 500_000}
    with pytest.raises(GatewayError) as refused:  # 24,288 left in all
        service.reserve(request(key_limits=limits, tenant_limits={}, prompt=0, output=30_000))
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert "used 500000 tokens" in refused.value.message
    for reservation in [*held, big]:
        service.settle(reservation, 0, 1_000, 0.0)
    assert window_totals(client.store) == {("key#k1", "tokens_per_minute"): 4_000}
    service.reserve(request(key_limits=limits, tenant_limits={}, prompt=0, output=30_000))


# ---- concurrency slots are leases (issue 17) ---------------------------------------------------------


def test_a_dead_holders_concurrency_slot_is_free_again_after_its_lease():
    from tests.helpers import FakeClock

    clock = FakeClock()
    client = faithful(hold=0.0)
    ledger = DynamoQuotaLedger(client, TABLE, snapshot_after_reserve=False, clock=clock, sleep=clock.sleep)
    service = QuotaService(ledger, clock=clock)
    limits = {"max_concurrent_requests": 2, "tokens_per_day": 10**6}

    def reserve(name):
        return service.reserve(ReservationRequest(name, "k1", "acme", limits, {}, 40, 60, 0.0))

    crashed = reserve("crashed")  # its environment dies: it never settles, never renews
    alive = reserve("alive")
    with pytest.raises(GatewayError) as refused:
        reserve("refused-1")
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.headers["retry-after"] == "1"  # both holders renewed just now

    clock.advance(35)
    assert ledger.renew_leases("alive", alive.charges)  # the live holder renews; the dead one cannot
    with pytest.raises(GatewayError) as refused:
        reserve("refused-2")
    # When a slot really frees: the dead holder's lease ends 60 s after it was taken.
    assert refused.value.headers["retry-after"] == "25"

    clock.advance(26)  # 61 s after the crash: no reaper has run
    admitted = reserve("admitted")

    def slot(reservation):
        return next(c.slot for c in reservation.charges if c.limit_name == "max_concurrent_requests")

    assert slot(admitted) == slot(crashed) is not None
    # A late settlement of the dead request changes its own windows but not the new holder's slot.
    service.settle(crashed, 40, 10, 0.0)
    with pytest.raises(GatewayError):
        reserve("still-full")
    service.settle(admitted, 40, 10, 0.0)
    reserve("after-a-settle")


# ---- before the first byte (issue 21 goal 1, keys with limits) ---------------------------------------


@pytest.mark.parametrize(
    "key_limits",
    [{"requests_per_minute": 60, "tokens_per_day": 100_000}, GENEROUS_KEY],
    ids=["one-item-windows", "sharded-windows"],
)
def test_a_key_with_limits_makes_one_store_round_trip_before_the_upstream_call(key_limits):
    # The proxy's ledger (no snapshot read): the reservation is the only call before the upstream
    # is called; the settlement is the only one after.
    client = faithful(hold=0.0)
    service = service_on(client)
    reservation = service.reserve(request(key_limits=key_limits))
    assert client.calls == {"TransactWriteItems": 1}
    service.settle(reservation, 30, 20, 0.0)
    assert client.calls == {"TransactWriteItems": 2}


def test_a_live_request_renews_its_slot_lease_until_it_settles():
    import time

    from quotagate.quota.slots import LeaseRenewer

    renewed: list[str] = []
    renewer = LeaseRenewer(lambda request_id, charges: renewed.append(request_id) or True, interval=0.02)
    renewer.hold("streaming", ())
    deadline = time.monotonic() + 5
    while renewed.count("streaming") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert renewed.count("streaming") >= 2
    renewer.release("streaming")
    time.sleep(0.05)
    count = renewed.count("streaming")
    time.sleep(0.1)
    assert renewed.count("streaming") == count  # settled: no more renewals


@pytest.mark.parametrize(
    ("blocks", "step_blocks"),
    [((3, 5), 0.25), ((5, 3), 0.25), ((250, 300), 1)],
    ids=["raised", "lowered", "raised-past-256-shards"],
)
def test_a_limit_changed_in_the_middle_of_a_window_never_lets_it_pass_the_larger_limit(blocks, step_blocks):
    # Requests of a quarter block (or a block) fill a window of 3 (or 250) blocks; then its limit changes.
    # Raised: exactly the new limit passes in all. Lowered: nothing more passes (the old usage counts).
    block = 262_144
    step = int(block * step_blocks)
    before, after = (b * block for b in blocks)
    client = faithful(hold=0.0)
    service = service_on(client)

    def fill(limit):
        admitted = 0
        while True:
            try:
                service.reserve(request(key_limits={"tokens_per_day": limit}, tenant_limits={}, prompt=0, output=step))
            except GatewayError as refused:
                assert refused.status == 429
                return admitted
            admitted += 1

    assert fill(before) * step == before
    more = fill(after)
    assert window_totals(client.store)[("key#k1", "tokens_per_day")] == max(before, after)
    assert more * step == max(0, after - before)
