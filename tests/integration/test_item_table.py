"""ItemTable (the low-level client under the key and tenant stores) reads and writes exactly what a
boto3 resource's Table does: an item written by one is read back identically by the other."""

from __future__ import annotations

from decimal import Decimal

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from quotagate import settings, tables
from quotagate.dal.item_table import ItemTable
from quotagate.dal.keys_store import DynamoKeyStore, KeyRecord
from quotagate.dal.tenants_store import DynamoTenantStore, TenantRecord

ITEM = {
    "key_id": "abcdefghijkl",
    "tenant": "acme",
    "limits": {"usd_per_day": Decimal("0.5"), "tokens_per_minute": Decimal(1000)},
    "allowed_models": ["mock-gpt", "chat-default"],
    "tags": {"a", "b"},
    "blob": b"\x00\xff",
    "enabled": True,
    "note": None,
    "version": Decimal(3),
}


@pytest.fixture
def both(monkeypatch):
    monkeypatch.delenv(settings.KEYS_TABLE, raising=False)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        tables.create_all(client)
        resource_table = boto3.resource("dynamodb", region_name="us-east-1").Table(tables.KEYS.name())
        yield ItemTable(client, tables.KEYS.name()), resource_table


def plain(item):
    """Binary values come back as boto3's Binary from both; compare their bytes."""
    return {k: (bytes(v.value) if hasattr(v, "value") else v) for k, v in item.items()}


def test_an_item_round_trips_both_ways(both):
    item_table, resource_table = both
    item_table.put_item(Item=ITEM)
    assert plain(resource_table.get_item(Key={"key_id": ITEM["key_id"]})["Item"]) == plain(ITEM)
    resource_table.put_item(Item={**ITEM, "key_id": "mnopqrstuvwx"})
    read = item_table.get_item(Key={"key_id": "mnopqrstuvwx"}, ConsistentRead=True)["Item"]
    assert plain(read) == plain({**ITEM, "key_id": "mnopqrstuvwx"})
    assert read == resource_table.get_item(Key={"key_id": "mnopqrstuvwx"})["Item"]


def test_a_missing_item_has_no_item_field(both):
    item_table, resource_table = both
    assert "Item" not in item_table.get_item(Key={"key_id": "nothing-here"})
    assert "Item" not in resource_table.get_item(Key={"key_id": "nothing-here"})


def test_a_failed_condition_is_the_same_client_error(both):
    item_table, _ = both
    item_table.put_item(Item=ITEM)
    with pytest.raises(ClientError) as failed:
        item_table.put_item(
            Item=ITEM,
            ConditionExpression="attribute_exists(key_id) AND #v = :expected",
            ExpressionAttributeNames={"#v": "version"},
            ExpressionAttributeValues={":expected": 2},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert failed.value.response["Error"]["Code"] == "ConditionalCheckFailedException"


def test_a_query_pages_through_plain_items(both):
    item_table, _ = both
    for i in range(5):
        item_table.put_item(Item={**ITEM, "key_id": f"key{i:09d}"})
    request = {
        "IndexName": "by_tenant",
        "KeyConditionExpression": "#t = :t",
        "ExpressionAttributeNames": {"#t": "tenant"},
        "ExpressionAttributeValues": {":t": "acme"},
        "Limit": 2,
    }
    found = []
    while True:
        page = item_table.query(**request)
        found += page["Items"]
        if "LastEvaluatedKey" not in page:
            break
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    assert sorted(i["key_id"] for i in found) == [f"key{i:09d}" for i in range(5)]
    assert all(i["limits"] == ITEM["limits"] for i in found)


def test_the_stores_default_to_it_and_share_the_keys_table(both, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    keys = DynamoKeyStore()
    assert isinstance(keys.table, ItemTable)
    tenants = DynamoTenantStore(keys.table)
    record = KeyRecord(
        key_id="abcdefghijkl", tenant="acme", consumer="c", plan="free", secret_hash="0" * 64, created_at=1
    )
    keys.put_new(record)
    tenants.put_new(TenantRecord(tenant="acme", limits={"tokens_per_minute": 1000.5}, created_at=1))
    assert keys.get("abcdefghijkl") == record
    assert keys.list_by_tenant("acme") == [record]
    assert tenants.get("acme").limits == {"tokens_per_minute": 1000.5}
