"""The reservation reaper: closes reservations that no settlement will ever close.

A reservation still ``reserved`` after the longest possible request (``QG_MAX_REQUEST_SECONDS``)
plus a margin belongs to an environment that died (a crash, a timeout that killed the function
before it settled, a settlement lost before it reached the retry queue). The reaper marks it
``expired`` and KEEPS its charge: what the provider billed for it is unknown, and the reserved worst
case is the safe side. (Concurrency slots are leases that free themselves: quota.slots.)

It reads only the sparse ``reserved`` index (``tables.RESERVED_INDEX``): items leave that index
when they are settled or expired, so the reaper's reads are proportional to what is open, never a
scan of the table. Expiring is a conditional write on ``status = reserved``, so a settlement that
lands at the same moment wins or loses cleanly, and the slot releases ride in the same transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quotagate import settings, tables
from quotagate.quota.ledger import (
    RESERVATION_RETENTION_SECONDS,
    RESERVATION_SK,
    RESERVED_SHARDS,
    ReservationStatus,
)
from quotagate.quota.windows import CONCURRENCY_LIMIT

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DEFAULT_MARGIN_SECONDS = 600.0
DEFAULT_MAX_ITEMS = 1_000  # per run; the schedule comes back for the rest


@dataclass(frozen=True)
class ReapResult:
    expired: int  # reservations closed by this run
    skipped: int  # settled (or expired) between the index read and the write
    cutoff: int  # reservations opened before this epoch second were closed


def max_request_seconds_from_env() -> float:
    return float(settings.env(settings.MAX_REQUEST_SECONDS) or settings.DEFAULT_MAX_REQUEST_SECONDS)


def margin_seconds_from_env() -> float:
    return float(settings.env(settings.REAPER_MARGIN_SECONDS) or DEFAULT_MARGIN_SECONDS)


class ReservationReaper:
    def __init__(
        self,
        client: Any,
        table_name: str | None = None,
        *,
        max_request_seconds: float = settings.DEFAULT_MAX_REQUEST_SECONDS,
        margin_seconds: float = DEFAULT_MARGIN_SECONDS,
        clock: Callable[[], float] = time.time,
        max_items: int = DEFAULT_MAX_ITEMS,
    ) -> None:
        self._client = client
        self.table_name = table_name or tables.QUOTA.name()
        self.age_seconds = max_request_seconds + margin_seconds
        self._clock = clock
        self.max_items = max_items

    def reap(self) -> ReapResult:
        now = int(self._clock())
        cutoff = now - int(self.age_seconds)
        expired = skipped = 0
        for item in self._open_before(cutoff):
            if self._expire(item, now):
                expired += 1
            else:
                skipped += 1
            if expired + skipped >= self.max_items:
                break
        return ReapResult(expired, skipped, cutoff)

    def _open_before(self, cutoff: int) -> Iterator[dict[str, Any]]:
        index = tables.RESERVED_INDEX
        for shard in range(RESERVED_SHARDS):
            request: dict[str, Any] = {
                "TableName": self.table_name,
                "IndexName": index.name,
                "KeyConditionExpression": "#shard = :shard AND #since < :cutoff",
                "ExpressionAttributeNames": {"#shard": index.partition_key, "#since": str(index.sort_key)},
                "ExpressionAttributeValues": {":shard": {"S": f"r{shard}"}, ":cutoff": {"N": str(cutoff)}},
            }
            while True:
                page = self._client.query(**request)
                yield from page.get("Items", [])
                if "LastEvaluatedKey" not in page:
                    break
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _expire(self, item: dict[str, Any], now: int) -> bool:
        from botocore.exceptions import ClientError

        index = tables.RESERVED_INDEX
        update = {
            "TableName": self.table_name,
            "Key": {"pk": item["pk"], "sk": {"S": RESERVATION_SK}},
            "UpdateExpression": "SET #st = :expired, #at = :now, #exp = :expires REMOVE #shard, #since",
            "ConditionExpression": "#st = :reserved",
            "ExpressionAttributeNames": {
                "#st": "status",
                "#at": "expired_at",
                "#exp": "expires_at",
                "#shard": index.partition_key,
                "#since": str(index.sort_key),
            },
            "ExpressionAttributeValues": {
                ":expired": {"S": ReservationStatus.EXPIRED},
                ":reserved": {"S": ReservationStatus.RESERVED},
                ":now": {"N": str(now)},
                ":expires": {"N": str(now + RESERVATION_RETENTION_SECONDS)},
            },
        }
        releases = concurrency_releases(self.table_name, item)
        try:
            if releases:
                self._client.transact_write_items(TransactItems=[{"Update": update}, *releases])
            else:
                self._client.update_item(**update)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                return False  # settled (or expired) since the index was read
            raise
        return True


def concurrency_releases(table_name: str, item: dict[str, Any]) -> list[dict[str, Any]]:
    """Give back the concurrency counter of a reservation made before slots were leases (its
    ``max_concurrent_requests`` charges without a ``slot``); its other charges are kept."""
    releases = []
    for charge in item.get("charges", {}).get("L", []):
        fields = charge["M"]
        if fields["sk"]["S"] != CONCURRENCY_LIMIT or "slot" in fields:
            continue  # a leased slot (quota.slots) frees itself when its lease runs out
        releases.append(
            {
                "Update": {
                    "TableName": table_name,
                    "Key": {"pk": fields["pk"], "sk": fields["sk"]},
                    "UpdateExpression": "ADD #u :release",
                    "ExpressionAttributeNames": {"#u": "used"},
                    "ExpressionAttributeValues": {":release": {"N": str(-int(fields["amount"]["N"]))}},
                }
            }
        )
    return releases
