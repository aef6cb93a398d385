"""Storage of API key records. Only hashes of keys are stored, never the keys themselves."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol

from quotagate import tables
from quotagate.auth_types import KeyStatus
from quotagate.dal.exceptions import KeyAlreadyExists, KeyNotFound, KeyVersionConflict


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    tenant: str
    consumer: str
    plan: str
    secret_hash: str
    created_at: int
    status: KeyStatus = KeyStatus.ACTIVE
    name: str | None = None
    expires_at: int | None = None  # epoch seconds
    allowed_models: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)  # per-key overrides of the plan's limits
    previous_secret_hash: str | None = None  # the key replaced by the last rotation...
    previous_valid_until: int | None = None  # ...keeps working until then
    updated_at: int | None = None
    # Incremented by every change made through ``replace_if_version`` (optimistic concurrency, so a
    # concurrent update can never undo a revocation). A created key starts at 1.
    version: int = 0

    def public_view(self) -> dict[str, Any]:
        """What callers of the keys API may see: never hashes."""
        view = asdict(self)
        for secret_field in ("secret_hash", "previous_secret_hash"):
            view.pop(secret_field)
        view["rotation_grace_until"] = view.pop("previous_valid_until")
        return view


class KeyStore(Protocol):
    def get(self, key_id: str) -> KeyRecord | None: ...

    def put_new(self, record: KeyRecord) -> None: ...

    def list_by_tenant(self, tenant: str) -> list[KeyRecord]: ...

    def replace_if_version(self, record: KeyRecord, expected_version: int) -> None:
        """Replace the stored record only if its version is still ``expected_version``.

        Raises KeyNotFound if there is no record, KeyVersionConflict if it changed in between.
        """
        ...


def _to_item(record: KeyRecord) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, float):
            return Decimal(str(value))
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return {k: convert(v) for k, v in asdict(record).items() if v is not None}


def _from_item(item: dict[str, Any]) -> KeyRecord:
    def convert(value: Any) -> Any:
        if isinstance(value, Decimal):
            return int(value) if value == value.to_integral_value() else float(value)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    known = {f for f in KeyRecord.__dataclass_fields__}
    fields = {k: convert(v) for k, v in item.items() if k in known}
    if "status" in fields:
        fields["status"] = KeyStatus(fields["status"])
    return KeyRecord(**fields)


class DynamoKeyStore:
    def __init__(self, table: Any | None = None) -> None:
        """``table``: the keys table, a boto3 ``Table`` or an :class:`ItemTable` (the default: no boto3
        resource to build on a cold start)."""
        if table is None:
            from quotagate import aws
            from quotagate.dal.item_table import ItemTable

            table = ItemTable(aws.client("dynamodb"), tables.KEYS.name())
        self._table = table

    @property
    def table(self) -> Any:
        """The keys table (tenant records share it: ``dal.tenants_store``)."""
        return self._table

    def get(self, key_id: str) -> KeyRecord | None:
        item = self._table.get_item(Key={"key_id": key_id}, ConsistentRead=True).get("Item")
        return _from_item(item) if item else None

    def put_new(self, record: KeyRecord) -> None:
        from botocore.exceptions import ClientError

        try:
            self._table.put_item(Item=_to_item(record), ConditionExpression="attribute_not_exists(key_id)")
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise KeyAlreadyExists(record.key_id) from error
            raise

    def replace_if_version(self, record: KeyRecord, expected_version: int) -> None:
        from botocore.exceptions import ClientError

        try:
            self._table.put_item(
                Item=_to_item(record),
                ConditionExpression="attribute_exists(key_id) AND #version = :expected",
                ExpressionAttributeNames={"#version": "version"},
                ExpressionAttributeValues={":expected": expected_version},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                if error.response.get("Item"):
                    raise KeyVersionConflict(record.key_id) from error
                raise KeyNotFound(record.key_id) from error
            raise

    def list_by_tenant(self, tenant: str) -> list[KeyRecord]:
        records: list[KeyRecord] = []
        kwargs: dict[str, Any] = {
            "IndexName": "by_tenant",
            "KeyConditionExpression": "#tenant = :tenant",
            "ExpressionAttributeNames": {"#tenant": "tenant"},
            "ExpressionAttributeValues": {":tenant": tenant},
        }
        while True:
            page = self._table.query(**kwargs)
            records.extend(_from_item(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return records
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class InMemoryKeyStore:
    """Fake for unit tests: same contract as DynamoKeyStore."""

    def __init__(self) -> None:
        self._items: dict[str, KeyRecord] = {}
        self._lock = threading.Lock()

    def get(self, key_id: str) -> KeyRecord | None:
        return self._items.get(key_id)

    def put_new(self, record: KeyRecord) -> None:
        with self._lock:
            if record.key_id in self._items:
                raise KeyAlreadyExists(record.key_id)
            self._items[record.key_id] = record

    def replace_if_version(self, record: KeyRecord, expected_version: int) -> None:
        with self._lock:
            current = self._items.get(record.key_id)
            if current is None:
                raise KeyNotFound(record.key_id)
            if current.version != expected_version:
                raise KeyVersionConflict(record.key_id)
            self._items[record.key_id] = replace(record)

    def list_by_tenant(self, tenant: str) -> list[KeyRecord]:
        return sorted((r for r in self._items.values() if r.tenant == tenant), key=lambda r: r.key_id)
