"""The conflict-faithful store in front of moto (the same rules as in front of the in-memory store):
DynamoDB's transaction conflicts where moto serves one call at a time and never has any."""

from __future__ import annotations

import threading
import time

import boto3
import pytest
from botocore.exceptions import ClientError

from quotagate import tables
from quotagate_tools.faithful import ConflictFaithfulClient, ConflictRules
from quotagate_tools.local.motoserver import reset_moto_server, start_moto_server

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def moto_client():
    endpoint, stop = start_moto_server()
    try:
        reset_moto_server(endpoint)
        client = boto3.client(
            "dynamodb",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        tables.create_all(client)
        yield client
    finally:
        stop()


def add(pk, n=1, most_before=100):
    return {
        "Update": {
            "TableName": tables.QUOTA.name(),
            "Key": {"pk": {"S": pk}, "sk": {"S": "w"}},
            "UpdateExpression": "ADD #u :n",
            "ConditionExpression": "attribute_not_exists(#u) OR #u <= :max",
            "ExpressionAttributeNames": {"#u": "used"},
            "ExpressionAttributeValues": {":n": {"N": str(n)}, ":max": {"N": str(most_before)}},
        }
    }


def used(client, pk):
    item = client.get_item(TableName=tables.QUOTA.name(), Key={"pk": {"S": pk}, "sk": {"S": "w"}}).get("Item")
    return int(item["used"]["N"]) if item else 0


def test_moto_behind_the_faithful_front_cancels_overlapping_transactions(moto_client):
    client = ConflictFaithfulClient(moto_client, ConflictRules(hold_seconds=0.3))
    holder = threading.Thread(target=client.transact_write_items, kwargs={"TransactItems": [add("m-a", 5)]})
    holder.start()
    time.sleep(0.1)
    with pytest.raises(ClientError) as err:
        client.transact_write_items(TransactItems=[add("m-b"), add("m-a")])
    with pytest.raises(ClientError) as single:
        client.update_item(**add("m-a")["Update"])
    holder.join()
    assert [r["Code"] for r in err.value.response["CancellationReasons"]] == ["None", "TransactionConflict"]
    assert single.value.response["Error"]["Code"] == "TransactionConflictException"
    assert (used(moto_client, "m-a"), used(moto_client, "m-b")) == (5, 0)
    # moto's own verdicts come through unchanged once the item is free.
    with pytest.raises(ClientError) as condition:
        client.transact_write_items(TransactItems=[add("m-a", 1, most_before=4)])
    assert condition.value.response["CancellationReasons"][0]["Code"] == "ConditionalCheckFailed"


def test_a_burst_on_one_key_through_the_front_over_moto_is_answered_whole_and_exact(moto_client):
    # Issue 20's first row (a burst of 10 at a 20 ms conflict window lost 10 % through such a front),
    # with the project's own service and ledger over moto's DynamoDB.
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from quotagate.errors import GatewayError
    from quotagate.quota import DynamoQuotaLedger, QuotaService, ReservationRequest
    from tests.quota_table import QuotaTable

    client = ConflictFaithfulClient(moto_client, ConflictRules(hold_seconds=0.02))
    service = QuotaService(DynamoQuotaLedger(client, snapshot_after_reserve=False))
    key_limits = {"requests_per_minute": 1_000_000, "tokens_per_minute": 10**9}
    tenant_limits = {"tokens_per_day": 10**10}
    start = threading.Barrier(10)

    def one(_):
        request = ReservationRequest(uuid.uuid4().hex, "burst", "burst-co", key_limits, tenant_limits, 30, 70, 0.0)
        start.wait()
        try:
            reservation = service.reserve(request)
        except GatewayError as refused:
            return refused.status
        service.settle(reservation, 30, 20, 0.0)
        return 200

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(one, range(10)))
    assert statuses == [200] * 10
    table = QuotaTable(moto_client)
    assert table.usage_of("key#burst", "requests_per_minute") == 10
    assert table.usage_of("key#burst", "tokens_per_minute") == 500
    assert table.usage_of("tenant#burst-co", "tokens_per_day") == 500
