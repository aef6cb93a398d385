"""Usage events: names, schemas, parsing of ``Request Settled`` details, and publishing.

Schemas live next to this module (``schemas/*.v1.json``) and are part of the public contract:
``Request Settled`` (made by the EventBridge Pipe from the quota table's stream), ``Budget
Threshold Crossed`` and ``Usage Period Closed`` (made by the rollup and period-close functions).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from quotagate.quota.ledger import ReservationStatus
from quotagate.usage.exceptions import InvalidEvent, PublishFailed
from quotagate.usage.pipe import BUS_NAME, EVENT_SOURCE, PUBLISHED_STATUSES, REQUEST_SETTLED, SCHEMA_VERSION
from quotagate.usage.record import BUDGET_LIMITS, FIELDS, UsageOutcome, UsageSource, budget_field

BUDGET_THRESHOLD_CROSSED = "Budget Threshold Crossed"
USAGE_PERIOD_CLOSED = "Usage Period Closed"
SCHEMA_DIR = Path(__file__).with_name("schemas")
SCHEMA_FILES = {
    REQUEST_SETTLED: SCHEMA_DIR / "request_settled.v1.json",
    BUDGET_THRESHOLD_CROSSED: SCHEMA_DIR / "budget_threshold_crossed.v1.json",
    USAGE_PERIOD_CLOSED: SCHEMA_DIR / "usage_period_closed.v1.json",
}


def load_schema(detail_type: str) -> dict[str, Any]:
    return dict(json.loads(SCHEMA_FILES[detail_type].read_text()))


@dataclass(frozen=True)
class SettledRequest:
    """A ``Request Settled`` detail, parsed (integers as ints)."""

    request_id: str
    status: ReservationStatus  # settled or expired
    tenant: str
    consumer: str
    key_id: str
    subject: str
    model: str
    target: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd_micros: int
    usage_source: UsageSource
    outcome: UsageOutcome
    started_at_ms: int
    budgets: Mapping[str, int]

    @property
    def key(self) -> str:
        """The key dimension: the gateway key id, or ``jwt:<subject>`` for a JWT caller (as the
        quota windows name it)."""
        return self.key_id or f"jwt:{self.subject}"

    @classmethod
    def parse(cls, detail: Any) -> SettledRequest:
        if not isinstance(detail, Mapping):
            raise InvalidEvent("detail is not an object")
        if detail.get("schema_version") != SCHEMA_VERSION:
            raise InvalidEvent(f"unknown schema_version {detail.get('schema_version')!r}")
        values: dict[str, Any] = {}
        for name, kind in FIELDS.items():
            raw = detail.get(name)
            if not isinstance(raw, str):
                raise InvalidEvent(f"{name} missing or not a string")
            if kind == "N":
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise InvalidEvent(f"{name} is not an integer: {raw!r}") from None
            else:
                values[name] = raw
        if not values["request_id"] or not values["tenant"] or not values["model"]:
            raise InvalidEvent("request_id, tenant and model must not be empty")
        try:
            source, outcome = UsageSource(values["usage_source"]), UsageOutcome(values["outcome"])
        except ValueError as error:
            raise InvalidEvent(str(error)) from None
        for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd_micros", "started_at_ms"):
            if values[name] < 0:
                raise InvalidEvent(f"{name} is negative")
        status = detail.get("status")
        if not isinstance(status, str) or status not in PUBLISHED_STATUSES:
            raise InvalidEvent(f"unknown status {status!r}")
        return cls(
            request_id=values["request_id"],
            status=ReservationStatus(status),
            tenant=values["tenant"],
            consumer=values["consumer"],
            key_id=values["key_id"],
            subject=values["subject"],
            model=values["model"],
            target=values["target"],
            prompt_tokens=values["prompt_tokens"],
            completion_tokens=values["completion_tokens"],
            total_tokens=values["prompt_tokens"] + values["completion_tokens"],
            cost_usd_micros=values["cost_usd_micros"],
            usage_source=source,
            outcome=outcome,
            started_at_ms=values["started_at_ms"],
            budgets={budget_field(s, n): values[budget_field(s, n)] for s, n in BUDGET_LIMITS},
        )


class EventPublisher(Protocol):
    def publish(self, detail_type: str, detail: Mapping[str, Any]) -> None:
        """Put one event on the bus; raises if it was not accepted."""
        ...


class EventBridgePublisher:
    """``PutEvents`` on the usage bus (one entry per call: these events are rare)."""

    def __init__(self, client: Any, bus_name: str = BUS_NAME, source: str = EVENT_SOURCE) -> None:
        self._client = client
        self.bus_name = bus_name
        self.source = source

    def publish(self, detail_type: str, detail: Mapping[str, Any]) -> None:
        response = self._client.put_events(
            Entries=[
                {
                    "Source": self.source,
                    "DetailType": detail_type,
                    "Detail": json.dumps(detail),
                    "EventBusName": self.bus_name,
                }
            ]
        )
        if response.get("FailedEntryCount"):
            entry = (response.get("Entries") or [{}])[0]
            raise PublishFailed(f"{detail_type} not accepted: {entry.get('ErrorCode')} {entry.get('ErrorMessage')}")


class InMemoryPublisher:
    """Collects published events (unit tests); ``fail`` makes the next publishes raise."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.fail = 0

    def publish(self, detail_type: str, detail: Mapping[str, Any]) -> None:
        if self.fail:
            self.fail -= 1
            raise PublishFailed("injected failure")
        self.events.append((detail_type, dict(detail)))
