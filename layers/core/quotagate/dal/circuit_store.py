"""Circuit-breaker state of each upstream target, shared by every proxy container.

One item per target (``<provider>/<upstream model>``) in the circuits table, and one per target
and failing caller (``<target>#caller#<tenant digest>``, see :mod:`quotagate.logic.breaker`)::

    target        partition key
    state         "closed" | "open"
    failures      consecutive failures (reset by a success)
    callers       the callers (tenant digests) those failures came from (a string set, reset with them)
    open_until    epoch seconds: open -> half-open from then on
    probe_until   epoch seconds: the half-open probe lease held by ``probe_owner`` until then
    probe_owner   the container that holds the lease
    expires_at    TTL (clean-up only: a missing item is a closed circuit)

Every transition is one conditional ``UpdateItem``, so two containers can never both open a
circuit nor both take the half-open probe. :class:`InMemoryCircuitStore` keeps the same contract
for unit tests. The policy (when to open, for how long) lives in :mod:`quotagate.logic.breaker`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from quotagate import tables

if TYPE_CHECKING:
    from collections.abc import Sequence


class CircuitState(StrEnum):
    CLOSED = "closed"  # requests go through
    OPEN = "open"  # the router skips the target until ``open_until``
    HALF_OPEN = "half_open"  # never stored: an open circuit whose cool-down is over (one probe)


ITEM_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class CircuitRecord:
    target: str
    state: CircuitState = CircuitState.CLOSED  # as stored: closed or open
    failures: int = 0
    open_until: float = 0.0
    probe_until: float = 0.0
    probe_owner: str | None = None
    callers: frozenset[str] = frozenset()  # who the consecutive failures came from

    def view(self, now: float) -> CircuitState:
        """The state now: an open circuit whose cool-down is over is half-open."""
        if self.state != CircuitState.OPEN:
            return CircuitState.CLOSED
        return CircuitState.OPEN if now < self.open_until else CircuitState.HALF_OPEN

    def probe_free(self, now: float) -> bool:
        return self.view(now) == CircuitState.HALF_OPEN and self.probe_until <= now


class CircuitStore(Protocol):
    def get_many(self, targets: Sequence[str]) -> dict[str, CircuitRecord]:
        """The records of ``targets`` (a target without an item is absent: closed)."""
        ...

    def add_failure(
        self,
        target: str,
        now: float,
        threshold: int,
        cooldown: float,
        caller: str | None = None,
        distinct_callers: int = 1,
    ) -> CircuitRecord:
        """``failures += 1`` (and ``caller`` joins ``callers``); a closed circuit whose count reaches
        ``threshold`` while at least ``distinct_callers`` callers failed opens until
        ``now + cooldown`` (exactly one caller opens it). Returns the record after the change."""
        ...

    def reopen(self, target: str, now: float, cooldown: float) -> CircuitRecord:
        """The half-open probe failed: open again until ``now + cooldown``, lease released."""
        ...

    def close(self, target: str, now: float) -> CircuitRecord:
        """A success: closed, failures 0, lease released."""
        ...

    def acquire_probe(
        self, target: str, now: float, lease_seconds: float, owner: str
    ) -> tuple[bool, CircuitRecord | None]:
        """Take the half-open probe lease if the circuit is half-open and nobody holds a live lease.
        Returns (taken, the record as it is now when known)."""
        ...


# -- in memory ---------------------------------------------------------------------------------
class InMemoryCircuitStore:
    def __init__(self) -> None:
        self._items: dict[str, CircuitRecord] = {}
        self._lock = threading.Lock()
        self.writes = 0  # conditional writes attempted (tests count them)

    def get_many(self, targets: Sequence[str]) -> dict[str, CircuitRecord]:
        with self._lock:
            return {t: self._items[t] for t in targets if t in self._items}

    def add_failure(
        self,
        target: str,
        now: float,
        threshold: int,
        cooldown: float,
        caller: str | None = None,
        distinct_callers: int = 1,
    ) -> CircuitRecord:
        with self._lock:
            self.writes += 1
            record = self._items.get(target, CircuitRecord(target))
            callers = record.callers | {caller} if caller is not None else record.callers
            record = replace(record, failures=record.failures + 1, callers=callers)
            if (
                record.state != CircuitState.OPEN
                and record.failures >= threshold
                and (distinct_callers <= 1 or len(callers) >= distinct_callers)
            ):
                record = replace(
                    record, state=CircuitState.OPEN, open_until=now + cooldown, probe_until=0.0, probe_owner=None
                )
            self._items[target] = record
            return record

    def reopen(self, target: str, now: float, cooldown: float) -> CircuitRecord:
        with self._lock:
            self.writes += 1
            record = self._items.get(target, CircuitRecord(target))
            record = replace(
                record,
                state=CircuitState.OPEN,
                failures=record.failures + 1,
                open_until=now + cooldown,
                probe_until=0.0,
                probe_owner=None,
            )
            self._items[target] = record
            return record

    def close(self, target: str, now: float) -> CircuitRecord:
        with self._lock:
            self.writes += 1
            record = CircuitRecord(target)
            self._items[target] = record
            return record

    def acquire_probe(
        self, target: str, now: float, lease_seconds: float, owner: str
    ) -> tuple[bool, CircuitRecord | None]:
        with self._lock:
            self.writes += 1
            record = self._items.get(target, CircuitRecord(target))
            if not record.probe_free(now):
                return False, record
            record = replace(record, probe_until=now + lease_seconds, probe_owner=owner)
            self._items[target] = record
            return True, record


# -- DynamoDB ----------------------------------------------------------------------------------
def _num(value: float) -> dict[str, str]:
    return {"N": f"{value:.3f}"}


def _from_item(item: dict[str, Any]) -> CircuitRecord:
    def number(name: str) -> float:
        raw = item.get(name, {}).get("N")
        return float(raw) if raw is not None else 0.0

    return CircuitRecord(
        target=item["target"]["S"],
        state=CircuitState(item.get("state", {}).get("S", CircuitState.CLOSED)),
        failures=int(number("failures")),
        open_until=number("open_until"),
        probe_until=number("probe_until"),
        probe_owner=item.get("probe_owner", {}).get("S"),
        callers=frozenset(item.get("callers", {}).get("SS", ())),
    )


_NAMES = {"#state": "state"}


class DynamoCircuitStore:
    """The shared store: a low-level DynamoDB client (``quotagate.aws.client("dynamodb")``)."""

    def __init__(self, client: Any, table_name: str | None = None) -> None:
        self._client = client
        self._table = table_name or tables.CIRCUIT.name()

    def _key(self, target: str) -> dict[str, Any]:
        return {"target": {"S": target}}

    def _expires(self, now: float) -> dict[str, str]:
        return {"N": str(int(now) + ITEM_TTL_SECONDS)}

    def get_many(self, targets: Sequence[str]) -> dict[str, CircuitRecord]:
        records: dict[str, CircuitRecord] = {}
        pending = [self._key(t) for t in dict.fromkeys(targets)]
        for _ in range(5):
            if not pending:
                break
            response = self._client.batch_get_item(RequestItems={self._table: {"Keys": pending[:100]}})
            for item in response.get("Responses", {}).get(self._table, []):
                record = _from_item(item)
                records[record.target] = record
            unprocessed = response.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
            pending = unprocessed + pending[100:]
        return records

    def add_failure(
        self,
        target: str,
        now: float,
        threshold: int,
        cooldown: float,
        caller: str | None = None,
        distinct_callers: int = 1,
    ) -> CircuitRecord:
        values: dict[str, Any] = {":one": {"N": "1"}, ":expires": self._expires(now)}
        if caller is not None:
            values[":caller"] = {"SS": [caller]}
        response = self._client.update_item(
            TableName=self._table,
            Key=self._key(target),
            UpdateExpression="ADD failures :one"
            + (", callers :caller" if caller is not None else "")
            + " SET expires_at = :expires",
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        record = _from_item(response["Attributes"])
        enough_callers = distinct_callers <= 1 or len(record.callers) >= distinct_callers
        if record.state == CircuitState.OPEN or record.failures < threshold or not enough_callers:
            return record
        condition = "failures >= :threshold AND (attribute_not_exists(#state) OR #state <> :open)"
        values = {
            ":open": {"S": CircuitState.OPEN},
            ":until": _num(now + cooldown),
            ":threshold": {"N": str(threshold)},
            ":expires": self._expires(now),
        }
        if distinct_callers > 1:
            condition += " AND size(callers) >= :distinct"
            values[":distinct"] = {"N": str(distinct_callers)}
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key=self._key(target),
                UpdateExpression="SET #state = :open, open_until = :until, expires_at = :expires "
                "REMOVE probe_until, probe_owner",
                ConditionExpression=condition,
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._client.exceptions.ConditionalCheckFailedException as error:
            # Someone else opened it first, or a success reset the count in between.
            item = error.response.get("Item")
            return _from_item(item) if item else record
        return _from_item(response["Attributes"])

    def reopen(self, target: str, now: float, cooldown: float) -> CircuitRecord:
        response = self._client.update_item(
            TableName=self._table,
            Key=self._key(target),
            UpdateExpression="SET #state = :open, open_until = :until, expires_at = :expires "
            "ADD failures :one REMOVE probe_until, probe_owner",
            ExpressionAttributeNames=_NAMES,
            ExpressionAttributeValues={
                ":open": {"S": CircuitState.OPEN},
                ":until": _num(now + cooldown),
                ":one": {"N": "1"},
                ":expires": self._expires(now),
            },
            ReturnValues="ALL_NEW",
        )
        return _from_item(response["Attributes"])

    def close(self, target: str, now: float) -> CircuitRecord:
        response = self._client.update_item(
            TableName=self._table,
            Key=self._key(target),
            UpdateExpression="SET #state = :closed, failures = :zero, expires_at = :expires "
            "REMOVE open_until, probe_until, probe_owner, callers",
            ExpressionAttributeNames=_NAMES,
            ExpressionAttributeValues={
                ":closed": {"S": CircuitState.CLOSED},
                ":zero": {"N": "0"},
                ":expires": self._expires(now),
            },
            ReturnValues="ALL_NEW",
        )
        return _from_item(response["Attributes"])

    def acquire_probe(
        self, target: str, now: float, lease_seconds: float, owner: str
    ) -> tuple[bool, CircuitRecord | None]:
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key=self._key(target),
                UpdateExpression="SET probe_until = :lease, probe_owner = :owner, expires_at = :expires",
                ConditionExpression="#state = :open AND open_until <= :now "
                "AND (attribute_not_exists(probe_until) OR probe_until <= :now)",
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues={
                    ":open": {"S": CircuitState.OPEN},
                    ":now": _num(now),
                    ":lease": _num(now + lease_seconds),
                    ":owner": {"S": owner},
                    ":expires": self._expires(now),
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._client.exceptions.ConditionalCheckFailedException as error:
            item = error.response.get("Item")
            return False, _from_item(item) if item else None
        return True, _from_item(response["Attributes"])
