"""The usage record a reservation item carries (attribute ``usage_record``, a DynamoDB map).

It is written in two steps, with no extra call: the reservation ``Put`` writes who asked for what
and the reserved amounts (``usage_source: reservation``, ``outcome: expired``), which is exactly
what billing must see if the request never settles and the reaper closes it as ``expired``; the
settlement ``Update`` that flips ``reserved → settled`` overwrites it with what really happened.

Every field is always present and always of the same DynamoDB type (``S`` or ``N``), because the
EventBridge Pipe's input template reads fixed paths (a missing path has no safe meaning there).
No prompt or completion text is ever part of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from quotagate.auth_types import AuthType

if TYPE_CHECKING:
    from collections.abc import Mapping

RECORD_ATTRIBUTE = "usage_record"


class UsageOutcome(StrEnum):
    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"  # no target answered, or it answered with an error status
    CLIENT_DISCONNECT = "client_disconnect"  # the client left before the answer was complete
    TIMEOUT = "timeout"  # a deadline or an upstream timeout ended the request
    ERROR_EVENT = "error_event"  # the stream had started and ended with an error event
    EXPIRED = "expired"  # never settled: the reaper closed the reservation, its charge kept


class UsageSource(StrEnum):
    PROVIDER = "provider"  # the provider's own usage report
    TOKENIZER = "tokenizer"  # counted with tiktoken from what was sent and received
    RESERVATION = "reservation"  # unknown: the reserved (upper-bound) amounts are billed


# Whose budget: the quota windows' scopes (``quota.windows.WindowScope``, which this module cannot
# import: the quota package imports it).
BudgetScope = Literal["key", "tenant"]
BUDGET_SCOPES: tuple[BudgetScope, ...] = ("key", "tenant")
# Budgets the rollup checks for threshold events: (scope, limit name). 0 means "no such budget".
BUDGET_LIMITS: tuple[tuple[BudgetScope, str], ...] = tuple(
    (scope, name)
    for scope in BUDGET_SCOPES
    for name in ("tokens_per_day", "tokens_per_month", "usd_per_day", "usd_per_month")
)


def budget_field(scope: str, limit_name: str) -> str:
    return f"budget_{scope}_{limit_name}"


# field name -> DynamoDB type. The order is the order of the event's detail.
FIELDS: dict[str, str] = {
    "request_id": "S",
    "tenant": "S",
    "consumer": "S",
    "key_id": "S",  # gateway key id; "" for a JWT caller
    "subject": "S",  # the JWT subject (consumer claim); "" for a key caller
    "auth_type": "S",
    "plan": "S",
    "requested_model": "S",  # the model or alias the client named
    "model": "S",  # the alias that served (after any tier downgrade)
    "target": "S",  # <provider>/<upstream model> that served; "" when none did
    "provider": "S",
    "upstream_model": "S",
    "prompt_tokens": "N",
    "completion_tokens": "N",
    "total_tokens": "N",
    "cost_usd_micros": "N",
    "usage_source": "S",
    "outcome": "S",
    "http_status": "N",
    "started_at_ms": "N",  # epoch milliseconds when the reservation was made
    "time_to_first_byte_ms": "N",  # -1 when nothing was received from an upstream
    "duration_ms": "N",
    "failovers": "N",
    **{budget_field(scope, name): "N" for scope, name in BUDGET_LIMITS},
}


def jwt_subject(key_id: str) -> str:
    """The subject of a JWT caller's key id ``jwt:<tenant, ':' escaped>:<sub>`` (or ``jwt:<sub>``)."""
    rest = key_id.removeprefix("jwt:")
    _, colon, subject = rest.partition(":")
    return subject if colon else rest


def reservation_record(
    *,
    request_id: str,
    tenant: str,
    consumer: str,
    key_id: str,
    auth_type: str,
    plan: str,
    requested_model: str,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd_micros: int,
    started_at: float,
    budgets: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The record as written with the reservation: billed as-is if the request never settles."""
    is_jwt = auth_type == AuthType.JWT
    record: dict[str, Any] = {
        "request_id": request_id,
        "tenant": tenant,
        "consumer": consumer,
        "key_id": "" if is_jwt else key_id,
        "subject": jwt_subject(key_id) if is_jwt else "",
        "auth_type": AuthType.JWT if is_jwt else AuthType.API_KEY,
        "plan": plan,
        "requested_model": requested_model,
        "model": model,
        "target": "",
        "provider": "",
        "upstream_model": "",
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens),
        "total_tokens": int(prompt_tokens) + int(completion_tokens),
        "cost_usd_micros": int(cost_usd_micros),
        "usage_source": UsageSource.RESERVATION,
        "outcome": UsageOutcome.EXPIRED,
        "http_status": 0,
        "started_at_ms": int(started_at * 1000),
        "time_to_first_byte_ms": -1,
        "duration_ms": 0,
        "failovers": 0,
    }
    for scope, name in BUDGET_LIMITS:
        record[budget_field(scope, name)] = int((budgets or {}).get(budget_field(scope, name), 0))
    return record


def settled_record(
    reserved: Mapping[str, Any],
    *,
    target: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd_micros: int,
    usage_source: UsageSource,
    outcome: UsageOutcome,
    http_status: int,
    time_to_first_byte_ms: float | None,
    duration_ms: float,
    failovers: int,
) -> dict[str, Any]:
    """The reservation's record completed with what really happened."""
    provider, _, upstream_model = (target or "").partition("/")
    record = dict(reserved)
    record.update(
        target=target or "",
        provider=provider,
        upstream_model=upstream_model,
        prompt_tokens=int(prompt_tokens),
        completion_tokens=int(completion_tokens),
        total_tokens=int(prompt_tokens) + int(completion_tokens),
        cost_usd_micros=int(cost_usd_micros),
        usage_source=UsageSource(usage_source),
        outcome=UsageOutcome(outcome),
        http_status=int(http_status),
        time_to_first_byte_ms=-1 if time_to_first_byte_ms is None else max(0, math.floor(time_to_first_byte_ms)),
        duration_ms=max(0, math.floor(duration_ms)),
        failovers=max(0, int(failovers)),
    )
    return record


def to_attribute(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as a DynamoDB ``M`` attribute value (every field, with its fixed type)."""
    missing = set(FIELDS) - set(record)
    if missing:
        raise ValueError(f"usage record lacks {sorted(missing)}")
    value: dict[str, Any] = {}
    for name, kind in FIELDS.items():
        field = record[name]
        value[name] = {"N": str(int(field))} if kind == "N" else {"S": str(field)}
    return {"M": value}


@dataclass(frozen=True)
class Settlement:
    """What the proxy knows when it settles a request, beyond the token counts."""

    outcome: UsageOutcome
    http_status: int
    usage_source: UsageSource
    target: str | None = None
    time_to_first_byte_ms: float | None = None
    duration_ms: float = 0.0
    failovers: int = 0


def outcome_for_status(status: int) -> UsageOutcome:
    """The outcome of a request that ended with an error status before any body was streamed."""
    if status < 400:
        return UsageOutcome.OK
    if status in (408, 504):
        return UsageOutcome.TIMEOUT
    return UsageOutcome.UPSTREAM_ERROR


def source_of(metered_source: str) -> UsageSource:
    """The metering module's ``Usage.source`` (``MeteredSource``) as a usage source."""
    return UsageSource.PROVIDER if metered_source == "provider" else UsageSource.TOKENIZER


def refunded(reserved: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The record of a reservation released without a call (the store's answer to the reservation
    was lost, so the gateway refunded it and answered 503): nothing used, nothing billed."""
    if reserved is None:
        return None
    return settled_record(
        reserved,
        target=None,
        prompt_tokens=0,
        completion_tokens=0,
        cost_usd_micros=0,
        usage_source=UsageSource.TOKENIZER,
        outcome=UsageOutcome.UPSTREAM_ERROR,
        http_status=503,
        time_to_first_byte_ms=None,
        duration_ms=0,
        failovers=0,
    )
