"""Hot keys and hot tenants on a conflict-faithful store (issue 20): the project's QuotaService and
DynamoQuotaLedger, unchanged, against quotagate_tools.faithful (transactions hold their items,
overlapping ones are cancelled with TransactionConflict, items take 1,000 write units/s)."""

from __future__ import annotations

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
        pk, sk = item["pk"]["S"], item["sk"]["S"]
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
