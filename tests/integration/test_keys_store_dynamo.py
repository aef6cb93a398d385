"""DynamoKeyStore's optimistic-concurrency write (``replace_if_version``) on moto's DynamoDB."""

from __future__ import annotations

from dataclasses import replace

import boto3
import pytest
from moto import mock_aws

from quotagate import settings, tables
from quotagate.dal.exceptions import KeyNotFound, KeyVersionConflict
from quotagate.dal.item_table import ItemTable
from quotagate.dal.keys_store import DynamoKeyStore, KeyRecord

RECORD = KeyRecord(
    key_id="abcdefghijkl",
    tenant="acme",
    consumer="backend",
    plan="free",
    secret_hash="0" * 64,
    created_at=1_800_000_000,
    limits={"usd_per_day": 0.5},
    version=1,
)


@pytest.fixture(params=["boto3 Table", "ItemTable"])
def store(monkeypatch, request):
    """The store on a boto3 resource's Table and on the low-level client's ItemTable (its default)."""
    monkeypatch.delenv(settings.KEYS_TABLE, raising=False)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        tables.create_all(client)
        if request.param == "ItemTable":
            yield DynamoKeyStore(ItemTable(client, tables.KEYS.name()))
        else:
            yield DynamoKeyStore(boto3.resource("dynamodb", region_name="us-east-1").Table(tables.KEYS.name()))


def test_replace_if_version_writes_when_unchanged(store):
    store.put_new(RECORD)
    store.replace_if_version(replace(RECORD, plan="pro", version=2), expected_version=1)
    stored = store.get(RECORD.key_id)
    assert (stored.plan, stored.version, stored.limits) == ("pro", 2, {"usd_per_day": 0.5})


def test_replace_if_version_refuses_a_stale_write(store):
    store.put_new(RECORD)
    store.replace_if_version(replace(RECORD, status="revoked", version=2), expected_version=1)
    with pytest.raises(KeyVersionConflict):
        store.replace_if_version(replace(RECORD, status="active", version=2), expected_version=1)
    assert store.get(RECORD.key_id).status == "revoked"


def test_replace_if_version_of_a_missing_key(store):
    with pytest.raises(KeyNotFound):
        store.replace_if_version(replace(RECORD, version=2), expected_version=1)
    assert store.get(RECORD.key_id) is None
