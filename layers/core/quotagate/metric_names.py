"""The proxy's CloudWatch metrics (Embedded Metric Format), named in one place.

The proxy emits them (:mod:`quotagate.observability`) and the stack's dashboard and alarms read them
(``cdk_app/constructs/observability.py``): both import these names, so a metric on the dashboard is
always one the code emits. Every metric has the ``service`` dimension; ``Requests`` and
``Throttled`` also come broken down by the dimensions named below (one dimension per breakdown:
model and target names come from the configuration, the tier is the key's plan — never a tenant id,
so the number of metric streams stays bounded).
"""

from __future__ import annotations

from enum import StrEnum

NAMESPACE = "Quotagate"
SERVICE = "quotagate-proxy"  # value of the ``service`` dimension
SERVICE_DIMENSION = "service"


class Metric(StrEnum):
    REQUESTS = "Requests"  # every finished or refused request
    SERVER_ERRORS = "ServerErrors"  # answered 5xx
    THROTTLED = "Throttled"  # answered 429 (quota or rate limit), also by ``limit``
    TOKENS_IN = "TokensIn"
    TOKENS_OUT = "TokensOut"
    COST_MICRO_USD = "CostMicroUsd"  # what was charged, in micro-dollars
    TIME_TO_FIRST_BYTE = "TimeToFirstByte"  # ms, request start -> first upstream byte
    DURATION = "Duration"  # ms, request start -> settled
    GATEWAY_OVERHEAD = "GatewayOverhead"  # ms, request start -> first upstream call
    FAILOVERS = "Failovers"  # attempts that moved on to another target
    BREAKER_OPENS = "BreakerOpens"  # circuits opened (or re-opened after a failed probe)
    TENANT_BREAKER_OPENS = "TenantBreakerOpens"  # one tenant's own circuit for a target opened
    SETTLEMENT_FAILURES = "SettlementFailures"  # settlements that failed (reservation stays charged)
    OVERRUNS = "Overruns"  # requests whose actual usage exceeded their reservation


# The model, target or tier dimension of a request refused before that value was known.
UNKNOWN_DIMENSION_VALUE = "none"


class Dimension(StrEnum):
    OUTCOME = "outcome"
    STATUS_CLASS = "status_class"
    MODEL = "model"
    TARGET = "target"
    TIER = "tier"
    LIMIT = "limit"


class RequestOutcome(StrEnum):
    SUCCESS = "success"  # 2xx
    REJECTED = "rejected"  # 4xx other than 429: the client's request
    THROTTLED = "throttled"  # 429
    FAILED = "failed"  # 5xx


# Breakdowns of Requests (each its own dimension set next to the plain ``service`` one).
REQUEST_BREAKDOWNS = (Dimension.OUTCOME, Dimension.STATUS_CLASS, Dimension.MODEL, Dimension.TARGET, Dimension.TIER)
UNITS = {
    Metric.TIME_TO_FIRST_BYTE: "Milliseconds",
    Metric.DURATION: "Milliseconds",
    Metric.GATEWAY_OVERHEAD: "Milliseconds",
}


def unit(metric: Metric) -> str:
    return UNITS.get(metric, "Count")


def outcome_of(status: int) -> RequestOutcome:
    if status == 429:
        return RequestOutcome.THROTTLED
    if status >= 500:
        return RequestOutcome.FAILED
    if status >= 400:
        return RequestOutcome.REJECTED
    return RequestOutcome.SUCCESS


def status_class(status: int) -> str:
    return f"{status // 100}xx"
