"""DynamoQuotaLedger against a scripted fake client: request shapes, cancellation reasons, retries."""

import pytest
from botocore.exceptions import ClientError

from quotagate.quota import DynamoQuotaLedger, LedgerBusy, QuotaExceeded, ReservationExists
from quotagate.quota.windows import make_charge

NOW = 1_800_000_030.0


def charges():
    return [
        make_charge("key", "k1", "tokens_per_minute", 1000, 100, NOW),
        make_charge("tenant", "acme", "usd_per_day", 1, 5000, NOW),
    ]


def cancelled(*reasons):
    return ClientError(
        {
            "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
            "CancellationReasons": list(reasons),
        },
        "TransactWriteItems",
    )


OK = {"Code": "None"}
CONFLICT = {"Code": "TransactionConflict", "Message": "conflict"}


def short(used):
    return {"Code": "ConditionalCheckFailed", "Item": {"used": {"N": str(used)}}}


class FakeClient:
    """Replays scripted outcomes (an exception, a callable of the request, or None for success)."""

    def __init__(self, *outcomes, used=None):
        self.outcomes = list(outcomes)
        self.transactions = []
        self.updates = []
        self.batch_gets = 0
        self.used = used or {}

    def _next(self, request):
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if callable(outcome):
            outcome = outcome(request)
        if isinstance(outcome, Exception):
            raise outcome
        return {}

    def transact_write_items(self, **request):
        self.transactions.append(request)
        return self._next(request)

    def update_item(self, **request):
        self.updates.append(request)
        return self._next(request)

    def batch_get_item(self, RequestItems):
        self.batch_gets += 1
        ((table, spec),) = RequestItems.items()
        return {
            "Responses": {
                table: [
                    {"pk": key["pk"], "sk": key["sk"], "used": {"N": str(self.used[key["pk"]["S"]])}}
                    for key in spec["Keys"]
                    if key["pk"]["S"] in self.used
                ]
            }
        }


def ledger(client, **kwargs):
    return DynamoQuotaLedger(client, "quota-table", sleep=lambda s: None, **kwargs)


def test_reserve_is_one_transaction_of_guarded_adds_plus_the_reservation_put():
    client = FakeClient(used={"key#k1": 300, "tenant#acme": 5000})
    usages = ledger(client).reserve("req-1", charges())
    (request,) = client.transactions
    actions = request["TransactItems"]
    assert len(actions) == 3
    update = actions[0]["Update"]
    assert update["TableName"] == "quota-table"
    assert update["Key"] == {"pk": {"S": "key#k1"}, "sk": {"S": "tokens_per_minute#2027-01-15T08:00:00Z"}}
    assert update["UpdateExpression"].startswith("ADD #u :n")
    assert update["ConditionExpression"] == "attribute_not_exists(#u) OR #u <= :max"
    assert update["ExpressionAttributeValues"][":n"] == {"N": "100"}
    assert update["ExpressionAttributeValues"][":max"] == {"N": "900"}  # limit - amount
    assert update["ReturnValuesOnConditionCheckFailure"] == "ALL_OLD"
    put = actions[2]["Put"]
    assert put["Item"]["pk"] == {"S": "req#req-1"} and put["Item"]["status"] == {"S": "reserved"}
    assert put["ConditionExpression"] == "attribute_not_exists(pk)"
    assert len(put["Item"]["charges"]["L"]) == 2
    assert client.batch_gets == 1
    assert [(u.used, u.remaining) for u in usages] == [(300, 700), (5000, 995_000)]


def test_snapshot_read_can_be_turned_off():
    client = FakeClient()
    usages = ledger(client, snapshot_after_reserve=False).reserve("req-1", charges())
    assert client.batch_gets == 0 and [u.used for u in usages] == [None, None]


def test_short_windows_come_back_with_their_used_values():
    client = FakeClient(cancelled(short(950), OK, OK))
    with pytest.raises(QuotaExceeded) as err:
        ledger(client).reserve("req-1", charges())
    assert err.value.charge.limit_name == "tokens_per_minute"
    assert err.value.used == 950
    assert [u.remaining for u in err.value.shortfalls] == [50]
    # The window that passed is known only as a bound: remaining >= what was asked of it.
    assert [(u.remaining, u.exact) for u in err.value.observed] == [(50, True), (5000, False)]
    assert len(client.transactions) == 1


def test_a_charge_bigger_than_its_limit_never_reaches_the_store():
    client = FakeClient()
    with pytest.raises(QuotaExceeded):
        ledger(client).reserve("req-1", [make_charge("key", "k1", "tokens_per_minute", 10, 11, NOW)])
    assert client.transactions == []


def test_conflicts_are_retried_then_succeed():
    client = FakeClient(cancelled(CONFLICT, OK, OK), cancelled(OK, CONFLICT, OK), None)
    ledger(client).reserve("req-1", charges())
    assert len(client.transactions) == 3


def test_persistent_conflicts_raise_ledger_busy():
    client = FakeClient(*[cancelled(CONFLICT, OK, OK)] * 5)
    with pytest.raises(LedgerBusy):
        ledger(client, max_attempts=5).reserve("req-1", charges())
    assert len(client.transactions) == 5


def test_a_condition_failure_beats_a_conflict():
    client = FakeClient(cancelled(CONFLICT, short(999_000), OK))
    with pytest.raises(QuotaExceeded) as err:
        ledger(client).reserve("req-1", charges())
    assert err.value.charge.limit_name == "usd_per_day"


def test_our_own_committed_reservation_is_recognised():
    # A transaction delivered twice (its first response lost): the second finds the reservation
    # item with this call's token, so the call succeeds and nothing is charged twice.
    def already_committed(request):
        token = request["TransactItems"][-1]["Put"]["Item"]["token"]
        return cancelled(short(1000), OK, {"Code": "ConditionalCheckFailed", "Item": {"token": token}})

    client = FakeClient(already_committed)
    usages = ledger(client).reserve("req-1", charges())
    assert len(usages) == 2


def test_someone_elses_reservation_is_refused():
    other = {"Code": "ConditionalCheckFailed", "Item": {"token": {"S": "another-call"}}}
    with pytest.raises(ReservationExists):
        ledger(FakeClient(cancelled(OK, OK, other))).reserve("req-1", charges())


def test_settle_is_one_transaction_of_the_reservation_flip_and_nonzero_deltas():
    client = FakeClient()
    c = charges()
    assert ledger(client).settle("req-1", [(c[0], -60), (c[1], 0)], {"prompt_tokens": 40}) is True
    (request,) = client.transactions
    first, *windows = request["TransactItems"]
    assert first["Update"]["ConditionExpression"] == "#st = :reserved"
    assert first["Update"]["Key"] == {"pk": {"S": "req#req-1"}, "sk": {"S": "reservation"}}
    assert len(windows) == 1  # a zero delta writes nothing
    assert windows[0]["Update"]["Key"]["sk"] == {"S": c[0].sk}
    assert windows[0]["Update"]["ExpressionAttributeValues"][":d"] == {"N": "-60"}
    assert "ConditionExpression" not in windows[0]["Update"]


def test_settle_with_only_zero_deltas_is_a_single_update_item():
    client = FakeClient()
    c = charges()
    assert ledger(client).settle("req-1", [(c[0], 0), (c[1], 0)]) is True
    assert client.transactions == [] and len(client.updates) == 1


def test_second_settle_returns_false():
    c = charges()
    settled = {
        "Code": "ConditionalCheckFailed",
        "Item": {"status": {"S": "settled"}, "settle_token": {"S": "earlier"}},
    }
    assert ledger(FakeClient(cancelled(settled, OK))).settle("req-1", [(c[0], -10)]) is False
    ccf = ClientError(
        {
            "Error": {"Code": "ConditionalCheckFailedException", "Message": "x"},
            "Item": {"status": {"S": "settled"}},
        },
        "UpdateItem",
    )
    assert ledger(FakeClient(ccf)).settle("req-1", [(c[0], 0)]) is False


def test_settle_retries_conflicts_and_recognises_its_own_earlier_commit():
    c = charges()

    def committed_by_this_call(request):
        token = request["TransactItems"][0]["Update"]["ExpressionAttributeValues"][":tok"]
        return cancelled({"Code": "ConditionalCheckFailed", "Item": {"settle_token": token}}, OK)

    client = FakeClient(cancelled(OK, CONFLICT), committed_by_this_call)
    assert ledger(client).settle("req-1", [(c[0], -10)]) is True
    assert len(client.transactions) == 2


def test_settle_refuses_adjustments_that_make_usage_negative():
    c = charges()
    with pytest.raises(ValueError):
        ledger(FakeClient()).settle("req-1", [(c[0], -101)])


def test_charging_one_item_twice_is_a_programming_error():
    c = charges()
    with pytest.raises(ValueError):
        ledger(FakeClient()).reserve("req-1", [c[0], c[0]])


def throttled():
    return ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "UpdateItem")


def test_a_refused_request_is_one_unconditional_add_per_request_window():
    client = FakeClient()
    windows = [
        make_charge("key", "k1", "requests_per_minute", 10, 1, NOW),
        make_charge("tenant", "acme", "requests_per_minute", 1000, 1, NOW),
    ]
    ledger(client).count_requests(windows)
    assert client.transactions == []
    assert [u["Key"]["pk"]["S"].split("#s")[0] for u in client.updates] == ["key#k1", "tenant#acme"]
    for update in client.updates:
        assert update["UpdateExpression"].startswith("ADD #u :n")
        assert update["ExpressionAttributeValues"][":n"] == {"N": "1"}
        assert "ConditionExpression" not in update


def test_counting_never_touches_token_or_dollar_windows():
    with pytest.raises(ValueError):
        ledger(FakeClient()).count_requests(charges())


def test_a_count_is_retried_only_when_it_surely_did_not_land():
    window = [make_charge("key", "k1", "requests_per_minute", 10, 1, NOW)]
    client = FakeClient(throttled())
    ledger(client).count_requests(window)
    assert len(client.updates) == 2
    unknown = FakeClient(ClientError({"Error": {"Code": "InternalServerError", "Message": "?"}}, "UpdateItem"))
    with pytest.raises(LedgerBusy):
        ledger(unknown).count_requests(window)
    assert len(unknown.updates) == 1  # an ADD is not idempotent: no second one that might double it
