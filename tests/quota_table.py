"""What a test reads back from the quota store: a window's ``used`` and a reservation item.

The gateway itself never reads these back (it learns ``used`` from its own writes and ``read_used``),
so they live here, not in the ledger or the service. ``store`` is a low-level DynamoDB client (the
table ``tables.QUOTA``) or an :class:`InMemoryQuotaLedger`, whose own inspection methods answer.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer

from quotagate import tables
from quotagate.quota import InMemoryQuotaLedger
from quotagate.quota.ledger import RESERVATION_SK
from quotagate.quota.windows import CONCURRENCY_LIMIT, WINDOW_LIMITS, window_bounds, window_sk

if TYPE_CHECKING:
    from collections.abc import Callable


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class QuotaTable:
    def __init__(self, store: Any, clock: Callable[[], float] = time.time, table_name: str | None = None) -> None:
        self.store = store
        self.clock = clock
        self.table_name = table_name or tables.QUOTA.name()

    def get_used(self, pk: str, sk: str) -> int:
        """Current ``used`` of a window item (0 if absent)."""
        if isinstance(self.store, InMemoryQuotaLedger):
            return self.store.get_used(pk, sk)
        item = self.store.get_item(
            TableName=self.table_name, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
        ).get("Item")
        return int(item["used"]["N"]) if item and "used" in item else 0

    def usage_of(self, pk: str, limit_name: str, at: float | None = None) -> int:
        """``used`` of the window of ``limit_name`` containing ``at`` (default: the clock's now) for a
        scope pk such as ``key#<key_id>`` or ``tenant#<tenant>``."""
        _, period = WINDOW_LIMITS[limit_name]
        start, _ = window_bounds(period, self.clock() if at is None else at)
        sk = window_sk(limit_name, start)
        if isinstance(self.store, InMemoryQuotaLedger):
            return self.store.get_used(pk, sk)
        if limit_name == CONCURRENCY_LIMIT:
            return self.slots_held(pk)
        # A hot window is several shard items (quota.shards: <pk>#s<i>): its usage is their sum.
        total, request = (
            0,
            {
                "TableName": self.table_name,
                "FilterExpression": "(pk = :pk OR begins_with(pk, :shard)) AND sk = :sk",
                "ExpressionAttributeValues": {":pk": {"S": pk}, ":shard": {"S": f"{pk}#s"}, ":sk": {"S": sk}},
                "ConsistentRead": True,
            },
        )
        while True:
            page = self.store.scan(**request)
            total += sum(int(item["used"]["N"]) for item in page.get("Items", []) if "used" in item)
            if "LastEvaluatedKey" not in page:
                return total
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def slots_held(self, pk: str) -> int:
        """Concurrency slots whose lease is live now (quota.slots), for a scope pk."""
        items = self.store.query(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :slot)",
            ExpressionAttributeValues={":pk": {"S": pk}, ":slot": {"S": f"{CONCURRENCY_LIMIT}#"}},
            ConsistentRead=True,
        ).get("Items", [])
        now = self.clock()
        return sum(1 for item in items if "holder" in item and int(item["lease_until"]["N"]) >= now)

    def get_reservation(self, request_id: str) -> dict[str, Any] | None:
        """The reservation item of a request, as plain Python values (None if there is none)."""
        if isinstance(self.store, InMemoryQuotaLedger):
            return self.store.get_reservation(request_id)
        item = self.store.get_item(
            TableName=self.table_name,
            Key={"pk": {"S": f"req#{request_id}"}, "sk": {"S": RESERVATION_SK}},
            ConsistentRead=True,
        ).get("Item")
        if not item:
            return None
        deserializer = TypeDeserializer()
        return {name: _plain(deserializer.deserialize(value)) for name, value in item.items()}
