"""Aggregate ``Request Settled`` events exactly once into the usage table, and publish budget
threshold events.

Exactly once: one ``TransactWriteItems`` per event holds a conditional ``Put`` of a marker item
``applied#<request_id>`` (``attribute_not_exists``) together with the nine increments (tenant,
tenant+key, tenant+model; each by hour, day and month). Either the marker and every increment commit, or
nothing does; a second delivery of the same event (SQS at-least-once, a retried batch, a replay)
fails the marker's condition and changes nothing. Additions commute, so order never matters.
Cost: 10 item writes per event, billed double inside a transaction (20 write units for items up to
1 KB); a duplicate costs one cancelled transaction.

Thresholds: after an event is applied (or found to be a duplicate: a retry must still be able to
publish what a failed attempt could not), the day and month aggregates that have a budget in the
event are read (one strongly consistent ``BatchGetItem``); for every configured fraction a total
has reached, the fraction is claimed with a conditional ``ADD`` to the aggregate item's
``thresholds_emitted`` set, and only the one caller whose claim succeeds publishes the event. If
publishing fails the claim is withdrawn and the error propagates, so the message is retried.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quotagate import tables
from quotagate.table_keys import key_part
from quotagate.usage.events import BUDGET_THRESHOLD_CROSSED, EventPublisher, SettledRequest
from quotagate.usage.exceptions import RollupBusy
from quotagate.usage.periods import Granularity, period_label
from quotagate.usage.pipe import SCHEMA_VERSION
from quotagate.usage.record import BUDGET_LIMITS, BudgetScope, budget_field

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

DEFAULT_THRESHOLDS = (0.5, 0.8, 1.0)
# Markers outlive every redelivery: SQS keeps a message at most 14 days.
MARKER_RETENTION_SECONDS = 35 * 86_400
MARKER_SK = "applied"
THRESHOLDS_ATTRIBUTE = "thresholds_emitted"
_RETRYABLE = frozenset({"TransactionConflict", "ProvisionedThroughputExceeded", "ThrottlingError"})
_RETRYABLE_ERRORS = frozenset(
    {
        "TransactionConflictException",
        "TransactionInProgressException",
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
    }
)
# limit name -> (aggregate attribute, granularity)
_BUDGET_WINDOWS = {
    "tokens_per_day": ("total_tokens", Granularity.DAY),
    "tokens_per_month": ("total_tokens", Granularity.MONTH),
    "usd_per_day": ("usd_micros", Granularity.DAY),
    "usd_per_month": ("usd_micros", Granularity.MONTH),
}
COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "usd_micros")


def tenant_pk(tenant: str) -> str:
    return f"tenant#{key_part(tenant)}"


def key_pk(tenant: str, key: str) -> str:
    return f"tenant#{key_part(tenant)}#key#{key_part(key)}"


def model_pk(tenant: str, model: str) -> str:
    return f"tenant#{key_part(tenant)}#model#{key_part(model)}"


def aggregate_sk(granularity: Granularity, label: str) -> str:
    return f"{granularity}#{label}"


def marker_pk(request_id: str) -> str:
    return f"applied#{request_id}"


def parse_thresholds(text: str | None) -> tuple[float, ...]:
    """``"0.5,0.8,1"`` -> (0.5, 0.8, 1.0); each in (0, 10]."""
    if not text:
        return DEFAULT_THRESHOLDS
    values = tuple(sorted({float(part) for part in text.split(",") if part.strip()}))
    if not values or any(not (0 < v <= 10) or not math.isfinite(v) for v in values):
        raise ValueError(f"budget thresholds must be fractions in (0, 10]: {text!r}")
    return values


@dataclass(frozen=True)
class Applied:
    request_id: str
    applied: bool  # False: a duplicate, nothing changed
    thresholds_published: int = 0


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(int(value))}


class UsageRollup:
    def __init__(
        self,
        client: Any,
        publisher: EventPublisher,
        table_name: str | None = None,
        *,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        max_attempts: int = 6,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._publisher = publisher
        self.table_name = table_name or tables.USAGE.name()
        self.thresholds = tuple(thresholds)
        self.max_attempts = max(1, max_attempts)
        self._clock = clock
        self._sleep = sleep

    # ---- aggregation -----------------------------------------------------------------------------

    def apply(self, event: SettledRequest) -> Applied:
        applied = self._apply_once_with_retries(event)
        published = self.check_thresholds(event)
        return Applied(event.request_id, applied, published)

    def actions(self, event: SettledRequest) -> list[dict[str, Any]]:
        """The transaction of one event: its marker, then the nine increments."""
        started = event.started_at_ms / 1000
        actions: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self.table_name,
                    "Item": {
                        "pk": _s(marker_pk(event.request_id)),
                        "sk": _s(MARKER_SK),
                        "tenant": _s(event.tenant),
                        "expires_at": _n(int(self._clock()) + MARKER_RETENTION_SECONDS),
                    },
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
        ]
        for granularity in Granularity:
            label = period_label(granularity, started)
            sk = aggregate_sk(granularity, label)
            actions.append(
                self._increment(
                    event, tenant_pk(event.tenant), sk, granularity, label, {"scope": "tenant", "period": sk}, sets=True
                )
            )
            actions.append(
                self._increment(
                    event,
                    key_pk(event.tenant, event.key),
                    sk,
                    granularity,
                    label,
                    {"scope": "key", "key_id": event.key, "consumer": event.consumer},
                )
            )
            actions.append(
                self._increment(
                    event,
                    model_pk(event.tenant, event.model),
                    sk,
                    granularity,
                    label,
                    {"scope": "model", "model": event.model},
                )
            )
        return actions

    def _increment(
        self,
        event: SettledRequest,
        pk: str,
        sk: str,
        granularity: Granularity,
        label: str,
        attributes: Mapping[str, str],
        sets: bool = False,
    ) -> dict[str, Any]:
        values: dict[str, Any] = {
            ":one": _n(1),
            ":p": _n(event.prompt_tokens),
            ":c": _n(event.completion_tokens),
            ":t": _n(event.total_tokens),
            ":u": _n(event.cost_usd_micros),
            ":tenant": _s(event.tenant),
            ":g": _s(granularity),
            ":label": _s(label),
        }
        names = {"#oc": f"outcome_{event.outcome}", "#tenant": "tenant", "#g": "granularity", "#label": "period_label"}
        adds = [
            "requests :one",
            "prompt_tokens :p",
            "completion_tokens :c",
            "total_tokens :t",
            "usd_micros :u",
            "#oc :one",
        ]
        sets_expr = ["#tenant = :tenant", "#g = :g", "#label = :label"]
        for index, (name, value) in enumerate(attributes.items()):
            names[f"#a{index}"] = name
            values[f":a{index}"] = _s(value)
            sets_expr.append(f"#a{index} = :a{index}")
        if sets:  # the tenant item lists the keys and models it has seen (for per-model reads)
            names.update({"#keys": "keys", "#models": "models"})
            values.update({":keys": {"SS": [event.key]}, ":models": {"SS": [event.model]}})
            adds += ["#keys :keys", "#models :models"]
        return {
            "Update": {
                "TableName": self.table_name,
                "Key": {"pk": _s(pk), "sk": _s(sk)},
                "UpdateExpression": "ADD " + ", ".join(adds) + " SET " + ", ".join(sets_expr),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }

    def _apply_once_with_retries(self, event: SettledRequest) -> bool:
        from botocore.exceptions import ClientError

        actions = self.actions(event)
        for attempt in range(self.max_attempts):
            try:
                self._client.transact_write_items(TransactItems=actions)
                return True
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                if code == "TransactionCanceledException":
                    reasons = error.response.get("CancellationReasons") or []
                    if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                        return False  # already applied: the marker exists
                    if not any(r.get("Code") in _RETRYABLE for r in reasons):
                        raise
                elif code not in _RETRYABLE_ERRORS:
                    raise
            self._sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))
        raise RollupBusy(f"usage table contended; event {event.request_id} not applied yet")

    # ---- thresholds ------------------------------------------------------------------------------

    def check_thresholds(self, event: SettledRequest) -> int:
        """Publish every threshold this event's budgets have reached and nobody published yet."""
        from botocore.exceptions import ClientError

        started = event.started_at_ms / 1000
        wanted: list[tuple[BudgetScope, str, str, int, str, Granularity, str]] = []  # per budget
        for scope, limit in BUDGET_LIMITS:
            budget = event.budgets.get(budget_field(scope, limit), 0)
            if budget <= 0:
                continue
            attribute, granularity = _BUDGET_WINDOWS[limit]
            label = period_label(granularity, started)
            pk = tenant_pk(event.tenant) if scope == "tenant" else key_pk(event.tenant, event.key)
            wanted.append((scope, limit, attribute, budget, pk, granularity, label))
        if not wanted:
            return 0
        keys = {(w[4], aggregate_sk(w[5], w[6])) for w in wanted}
        response = self._client.batch_get_item(
            RequestItems={
                self.table_name: {
                    "Keys": [{"pk": _s(pk), "sk": _s(sk)} for pk, sk in sorted(keys)],
                    "ConsistentRead": True,
                }
            }
        )
        items = {(i["pk"]["S"], i["sk"]["S"]): i for i in response.get("Responses", {}).get(self.table_name, [])}
        published = 0
        for scope, limit, attribute, budget, pk, granularity, label in wanted:
            sk = aggregate_sk(granularity, label)
            item = items.get((pk, sk)) or {}
            used = int(item.get(attribute, {}).get("N", "0"))
            emitted = set(item.get(THRESHOLDS_ATTRIBUTE, {}).get("SS", []))
            for fraction in self.thresholds:
                percent = round(fraction * 100)
                if used < math.ceil(budget * fraction):
                    continue
                claim = f"{limit}:{percent}"
                if claim in emitted:
                    continue
                key = {"pk": _s(pk), "sk": _s(sk)}
                try:
                    self._client.update_item(
                        TableName=self.table_name,
                        Key=key,
                        UpdateExpression="ADD #t :claim",
                        ConditionExpression="attribute_not_exists(#t) OR NOT contains(#t, :one)",
                        ExpressionAttributeNames={"#t": THRESHOLDS_ATTRIBUTE},
                        ExpressionAttributeValues={":claim": {"SS": [claim]}, ":one": _s(claim)},
                    )
                except ClientError as error:
                    if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                        continue  # someone else claimed (and publishes) it
                    raise
                detail = {
                    "schema_version": SCHEMA_VERSION,
                    "tenant": event.tenant,
                    "scope": scope,
                    "key_id": event.key if scope == "key" else "",
                    "limit": limit,
                    "unit": "usd_micros" if attribute == "usd_micros" else "tokens",
                    "window": str(granularity),
                    "period": label,
                    "threshold_percent": percent,
                    "budget": budget,
                    "used": used,
                    "request_id": event.request_id,
                }
                try:
                    self._publisher.publish(BUDGET_THRESHOLD_CROSSED, detail)
                except Exception:
                    # Withdraw the claim so that the retried message publishes it.
                    self._client.update_item(
                        TableName=self.table_name,
                        Key=key,
                        UpdateExpression="DELETE #t :claim",
                        ExpressionAttributeNames={"#t": THRESHOLDS_ATTRIBUTE},
                        ExpressionAttributeValues={":claim": {"SS": [claim]}},
                    )
                    raise
                published += 1
        return published
