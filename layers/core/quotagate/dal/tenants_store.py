"""Tenant records: the limits every key and JWT of one tenant share.

Stored in the keys table (``tables.KEYS``) as item ``key_id = "tenant#<tenant>"``: a key id is
lowercase base32 (``apikeys.KEY_ID_RE``), so the two can never collide. The item has no ``tenant``
attribute, so it never appears in the ``by_tenant`` index of keys.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from quotagate.dal.exceptions import TenantAlreadyExists, TenantNotFound, TenantVersionConflict

if TYPE_CHECKING:
    from collections.abc import Callable

TENANT_ITEM_PREFIX = "tenant#"
RECORD_TYPE = "tenant"


@dataclass(frozen=True)
class TenantRecord:
    tenant: str
    limits: dict[str, float] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int | None = None
    version: int = 0

    def public_view(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "limits": dict(self.limits),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "version": self.version,
        }


class TenantStore(Protocol):
    def get(self, tenant: str) -> TenantRecord | None: ...

    def put_new(self, record: TenantRecord) -> None:
        """Raises TenantAlreadyExists."""
        ...

    def replace_if_version(self, record: TenantRecord, expected_version: int) -> None:
        """Raises TenantNotFound, TenantVersionConflict."""
        ...


def _item(record: TenantRecord) -> dict[str, Any]:
    return {
        "key_id": TENANT_ITEM_PREFIX + record.tenant,
        "record_type": RECORD_TYPE,
        "tenant_id": record.tenant,
        "limits": {k: Decimal(str(v)) for k, v in record.limits.items()},
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "version": record.version,
    }


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _record(item: dict[str, Any]) -> TenantRecord:
    return TenantRecord(
        tenant=str(item["tenant_id"]),
        limits={str(k): _number(v) for k, v in (item.get("limits") or {}).items()},
        created_at=int(item.get("created_at") or 0),
        updated_at=None if item.get("updated_at") is None else int(item["updated_at"]),
        version=int(item.get("version") or 0),
    )


class DynamoTenantStore:
    def __init__(self, table: Any | None = None) -> None:
        if table is None:
            from quotagate import aws, tables
            from quotagate.dal.item_table import ItemTable

            table = ItemTable(aws.client("dynamodb"), tables.KEYS.name())
        self._table = table

    def get(self, tenant: str) -> TenantRecord | None:
        item = self._table.get_item(Key={"key_id": TENANT_ITEM_PREFIX + tenant}, ConsistentRead=True).get("Item")
        return _record(item) if item and item.get("record_type") == RECORD_TYPE else None

    def put_new(self, record: TenantRecord) -> None:
        from botocore.exceptions import ClientError

        try:
            self._table.put_item(Item=_item(record), ConditionExpression="attribute_not_exists(key_id)")
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise TenantAlreadyExists(record.tenant) from error
            raise

    def replace_if_version(self, record: TenantRecord, expected_version: int) -> None:
        from botocore.exceptions import ClientError

        try:
            self._table.put_item(
                Item=_item(record),
                ConditionExpression="attribute_exists(key_id) AND #v = :expected",
                ExpressionAttributeNames={"#v": "version"},
                ExpressionAttributeValues={":expected": expected_version},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                if error.response.get("Item"):
                    raise TenantVersionConflict(record.tenant) from error
                raise TenantNotFound(record.tenant) from error
            raise


class InMemoryTenantStore:
    def __init__(self) -> None:
        self._records: dict[str, TenantRecord] = {}
        self._lock = threading.Lock()

    def get(self, tenant: str) -> TenantRecord | None:
        return self._records.get(tenant)

    def put_new(self, record: TenantRecord) -> None:
        with self._lock:
            if record.tenant in self._records:
                raise TenantAlreadyExists(record.tenant)
            self._records[record.tenant] = record

    def replace_if_version(self, record: TenantRecord, expected_version: int) -> None:
        with self._lock:
            current = self._records.get(record.tenant)
            if current is None:
                raise TenantNotFound(record.tenant)
            if current.version != expected_version:
                raise TenantVersionConflict(record.tenant)
            self._records[record.tenant] = replace(record)


DEFAULT_TTL_SECONDS = 15.0
_MAX_ENTRIES = 10_000


class CachedTenantRecords:
    """The proxy's short cache of tenant records (like ``CachedKeyRecords``): one read per tenant
    per container per TTL, so a limit change reaches every container within seconds."""

    def __init__(
        self, store: TenantStore, ttl_seconds: float = DEFAULT_TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[str, tuple[float, TenantRecord | None]] = {}
        self._lock = threading.Lock()

    def is_cached(self, tenant: str) -> bool:
        """Whether :meth:`get` answers from the cache (no store read)."""
        entry = self._entries.get(tenant)
        return entry is not None and self._clock() - entry[0] < self._ttl

    def get(self, tenant: str) -> TenantRecord | None:
        now = self._clock()
        entry = self._entries.get(tenant)
        if entry and now - entry[0] < self._ttl:
            return entry[1]
        record = self._store.get(tenant)
        with self._lock:
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[tenant] = (now, record)
        return record
