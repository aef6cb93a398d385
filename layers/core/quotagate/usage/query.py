"""Reading usage aggregates: the ``get_usage`` action of the keys function and the CLI.

A series is read with one ``Query`` per scope (``pk`` = the scope, ``sk`` between the first and
last period of the range). Aggregates exist per tenant, per tenant+key and per tenant+model; a
consumer's usage is the sum of its keys' (and of its JWT subject's) series; ``by`` splits a
tenant's usage per model or per key, which the tenant's aggregates list.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from quotagate import tables
from quotagate.usage.periods import Granularity, period_label, period_start
from quotagate.usage.record import UsageOutcome
from quotagate.usage.rollup import COUNTERS, aggregate_sk, key_pk, model_pk, tenant_pk

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

MAX_PERIODS = {Granularity.HOUR: 24 * 62, Granularity.DAY: 400, Granularity.MONTH: 120}
DEFAULT_SPAN = {Granularity.HOUR: 48 * 3600, Granularity.DAY: 31 * 86_400, Granularity.MONTH: 366 * 86_400}


class GroupBy(StrEnum):
    MODEL = "model"
    KEY = "key"


@dataclass(frozen=True)
class UsageQuery:
    tenant: str
    granularity: Granularity
    start: str  # first period label (inclusive)
    end: str  # last period label (inclusive)
    key_id: str | None = None
    keys: tuple[str, ...] = ()  # a consumer's keys (resolved by the caller)
    consumer: str | None = None
    model: str | None = None
    by: GroupBy | None = None


class UsageReader(Protocol):
    def items(self, pk: str, granularity: Granularity, start: str, end: str) -> list[dict[str, Any]]: ...


class DynamoUsageReader:
    def __init__(self, client: Any, table_name: str | None = None) -> None:
        self._client = client
        self.table_name = table_name or tables.USAGE.name()

    def items(self, pk: str, granularity: Granularity, start: str, end: str) -> list[dict[str, Any]]:
        from boto3.dynamodb.types import TypeDeserializer

        deserializer = TypeDeserializer()
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :a AND :b",
            "ExpressionAttributeValues": {
                ":pk": {"S": pk},
                ":a": {"S": aggregate_sk(granularity, start)},
                ":b": {"S": aggregate_sk(granularity, end)},
            },
        }
        found: list[dict[str, Any]] = []
        while True:
            page = self._client.query(**kwargs)
            found += [{k: deserializer.deserialize(v) for k, v in item.items()} for item in page.get("Items", [])]
            if not page.get("LastEvaluatedKey"):
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _empty() -> dict[str, Any]:
    return {**dict.fromkeys(COUNTERS, 0), "requests_by_outcome": {}}


def _add(into: dict[str, Any], item: Mapping[str, Any]) -> None:
    for name in COUNTERS:
        into[name] += int(item.get(name, 0))
    outcomes = into["requests_by_outcome"]
    for outcome in UsageOutcome:
        count = int(item.get(f"outcome_{outcome}", 0))
        if count:
            outcomes[str(outcome)] = outcomes.get(str(outcome), 0) + count


def _series(items: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    by_period: dict[str, dict[str, Any]] = {}
    totals = _empty()
    for item in items:
        label = str(item["sk"]).split("#", 1)[1]
        point = by_period.setdefault(label, {"period": label, **_empty()})
        _add(point, item)
        _add(totals, item)
    return [by_period[label] for label in sorted(by_period)], totals


def read_usage(reader: UsageReader, query: UsageQuery) -> dict[str, Any]:
    g, start, end = query.granularity, query.start, query.end
    result: dict[str, Any] = {"tenant": query.tenant, "granularity": str(g), "from": start, "to": end}
    if query.by is not None:
        tenant_items = reader.items(tenant_pk(query.tenant), g, start, end)
        names: set[str] = set()
        for item in tenant_items:
            names |= set(item.get("models" if query.by == GroupBy.MODEL else "keys") or ())
        groups = []
        for name in sorted(names):
            pk = model_pk(query.tenant, name) if query.by == GroupBy.MODEL else key_pk(query.tenant, name)
            series, totals = _series(reader.items(pk, g, start, end))
            if series:
                groups.append({str(query.by): name, "series": series, "totals": totals})
        _, totals = _series(tenant_items)
        result.update(by=str(query.by), groups=groups, totals=totals)
        return result
    if query.key_id is not None:
        scope, pks = {"key_id": query.key_id}, [key_pk(query.tenant, query.key_id)]
    elif query.consumer is not None:
        scope, pks = {"consumer": query.consumer}, [key_pk(query.tenant, k) for k in query.keys]
    elif query.model is not None:
        scope, pks = {"model": query.model}, [model_pk(query.tenant, query.model)]
    else:
        scope, pks = {}, [tenant_pk(query.tenant)]
    items = [item for pk in pks for item in reader.items(pk, g, start, end)]
    series, totals = _series(items)
    result.update(scope, series=series, totals=totals)
    return result


def period_range(granularity: Granularity, start: str | None, end: str | None, now: float) -> tuple[str, str]:
    """Labels of the first and last period; raises ValueError for a bad or too long range."""
    from quotagate.usage.periods import parse_label

    last = parse_label(granularity, end) if end else period_label(granularity, now)
    first = (
        parse_label(granularity, start)
        if start
        else period_label(granularity, period_start(granularity, last).timestamp() - DEFAULT_SPAN[granularity] + 1)
    )
    if first > last:
        raise ValueError("'from' is after 'to'")
    count = _count(granularity, first, last)
    if count > MAX_PERIODS[granularity]:
        raise ValueError(f"at most {MAX_PERIODS[granularity]} {granularity} periods per request ({count} asked)")
    return first, last


def _count(granularity: Granularity, first: str, last: str) -> int:
    a, b = period_start(granularity, first), period_start(granularity, last)
    if granularity == Granularity.MONTH:
        return (b.year - a.year) * 12 + b.month - a.month + 1
    step = 3600 if granularity == Granularity.HOUR else 86_400
    return int((b - a).total_seconds()) // step + 1
