"""Close usage periods: one ``Usage Period Closed`` event per tenant for each day and month that
ended more than a grace period ago, with the final totals.

Runs on a schedule. The grace period must cover the longest request (a reservation is settled
when its request ends: at most ``QG_MAX_REQUEST_SECONDS``), the reaper's delay for reservations
that never settle, and the pipeline's lag; events that still arrive later are counted in the
aggregates, but the period's event has gone out. Exactly once per tenant and period: a marker item
``closed#<tenant>`` / ``<granularity>#<period>`` is put with ``attribute_not_exists`` before the
event is published (and deleted again if publishing fails), so a second run — or two concurrent
runs — publish nothing new. Tenants of a period are found through the sparse index ``by_period``
of the tenant aggregates, never by a scan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quotagate import tables
from quotagate.table_keys import key_part
from quotagate.usage.events import USAGE_PERIOD_CLOSED, EventPublisher
from quotagate.usage.periods import Granularity, period_end, period_label, period_start, previous
from quotagate.usage.pipe import SCHEMA_VERSION
from quotagate.usage.record import UsageOutcome
from quotagate.usage.rollup import COUNTERS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from datetime import datetime

DEFAULT_GRACE_SECONDS = 2 * 3600
# Periods looked back at per run: a schedule that was down for less than this catches up.
LOOKBACK = {Granularity.DAY: 7, Granularity.MONTH: 2}
CLOSED_GRANULARITIES = (Granularity.DAY, Granularity.MONTH)
CLOSE_MARKER_RETENTION_SECONDS = 400 * 86_400


def closed_pk(tenant: str) -> str:
    return f"closed#{key_part(tenant)}"


@dataclass(frozen=True)
class ClosedPeriod:
    tenant: str
    granularity: Granularity
    period: str


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class PeriodCloser:
    def __init__(
        self,
        client: Any,
        publisher: EventPublisher,
        table_name: str | None = None,
        *,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._publisher = publisher
        self.table_name = table_name or tables.USAGE.name()
        self.grace_seconds = grace_seconds
        self._clock = clock

    def closable_periods(self, now: float | None = None) -> list[tuple[Granularity, str]]:
        """The periods that ended at least the grace period before ``now`` (newest first, bounded)."""
        now = self._clock() if now is None else now
        periods = []
        for granularity in CLOSED_GRANULARITIES:
            label = period_label(granularity, now)
            for _ in range(LOOKBACK[granularity] + 1):
                if period_end(granularity, label).timestamp() + self.grace_seconds <= now:
                    periods.append((granularity, label))
                label = previous(granularity, label)
        return periods

    def run(self, now: float | None = None) -> list[ClosedPeriod]:
        closed: list[ClosedPeriod] = []
        for granularity, label in self.closable_periods(now):
            for item in self._tenant_aggregates(granularity, label):
                done = self._close(granularity, label, item)
                if done:
                    closed.append(done)
        return closed

    def _tenant_aggregates(self, granularity: Granularity, label: str) -> Iterator[dict[str, Any]]:
        index = tables.USAGE.indexes[0].name
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": index,
            "KeyConditionExpression": "#p = :p",
            "ExpressionAttributeNames": {"#p": "period"},
            "ExpressionAttributeValues": {":p": {"S": f"{granularity}#{label}"}},
        }
        while True:
            page = self._client.query(**kwargs)
            yield from page.get("Items", [])
            if not page.get("LastEvaluatedKey"):
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _close(self, granularity: Granularity, label: str, item: dict[str, Any]) -> ClosedPeriod | None:
        from botocore.exceptions import ClientError

        tenant = item["tenant"]["S"]
        key = {"pk": {"S": closed_pk(tenant)}, "sk": {"S": f"{granularity}#{label}"}}
        # The final totals: a strongly consistent read of the tenant's aggregate (the index is
        # eventually consistent).
        fresh = (
            self._client.get_item(
                TableName=self.table_name, ConsistentRead=True, Key={"pk": item["pk"], "sk": item["sk"]}
            ).get("Item")
            or item
        )
        totals = {name: int(fresh.get(name, {}).get("N", "0")) for name in COUNTERS}
        outcomes = {str(o): int(fresh.get(f"outcome_{o}", {}).get("N", "0")) for o in UsageOutcome}
        try:
            self._client.put_item(
                TableName=self.table_name,
                Item={
                    **key,
                    "closed_at": {"N": str(int(self._clock()))},
                    "expires_at": {"N": str(int(self._clock()) + CLOSE_MARKER_RETENTION_SECONDS)},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return None  # closed by an earlier run
            raise
        detail = {
            "schema_version": SCHEMA_VERSION,
            "tenant": tenant,
            "granularity": str(granularity),
            "period": label,
            "period_start": _iso(period_start(granularity, label)),
            "period_end": _iso(period_end(granularity, label)),
            **totals,
            "requests_by_outcome": outcomes,
        }
        try:
            self._publisher.publish(USAGE_PERIOD_CLOSED, detail)
        except Exception:
            self._client.delete_item(TableName=self.table_name, Key=key)
            raise
        return ClosedPeriod(tenant, granularity, label)
