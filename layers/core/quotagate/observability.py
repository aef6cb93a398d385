"""Logging and metrics for the proxy with Powertools. The ASGI app is not a Lambda handler, so
metrics are flushed per request (Powertools' decorators cannot wrap it).

Metrics are CloudWatch Embedded Metric Format lines on stdout (:mod:`quotagate.emf`: the documents
of Powertools' EMF provider, at a fraction of its cost), named in :mod:`quotagate.metric_names`, the
module the stack's dashboard and alarms read too. Each record uses its own metric set: requests
finish concurrently (and breaker changes happen in worker threads), so none is shared between them.
"""

from __future__ import annotations

import collections
import math
import threading
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger, Metrics

from quotagate.emf import MetricSet
from quotagate.metric_names import (
    NAMESPACE,
    REQUEST_BREAKDOWNS,
    SERVICE,
    SERVICE_DIMENSION,
    UNKNOWN_DIMENSION_VALUE,
    Dimension,
    Metric,
    outcome_of,
    status_class,
    unit,
)
from quotagate.redaction import redact_log_output

if TYPE_CHECKING:
    from quotagate.errors import GatewayError
    from quotagate.logic.request_types import Outcome

logger = Logger(service=SERVICE)
redact_log_output(logger.registered_handler)  # no configured secret in any line, whatever its shape
# Kept for callers that add their own metrics; the request metrics below do not use it.
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

_RECENT = 4096
_recorded: collections.OrderedDict[str, None] = collections.OrderedDict()
_recorded_lock = threading.Lock()


def _provider() -> MetricSet:
    # ``service`` as a default dimension: every extra dimension set (add_dimensions) carries it too.
    return MetricSet(NAMESPACE, {SERVICE_DIMENSION: SERVICE})


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, end - start) * 1000, 1)


def _emit_requests(status: int, model: str | None, target: str | None, tier: str | None, limit: str | None) -> None:
    """``Requests`` (and ``ServerErrors``/``Throttled``) by outcome, status class, model, target, tier."""
    emf = _provider()
    emf.add_metric(name=Metric.REQUESTS, unit=unit(Metric.REQUESTS), value=1)
    if status >= 500:
        emf.add_metric(name=Metric.SERVER_ERRORS, unit=unit(Metric.SERVER_ERRORS), value=1)
    values = {
        Dimension.OUTCOME: outcome_of(status).value,
        Dimension.STATUS_CLASS: status_class(status),
        Dimension.MODEL: model or UNKNOWN_DIMENSION_VALUE,
        Dimension.TARGET: target or UNKNOWN_DIMENSION_VALUE,
        Dimension.TIER: tier or UNKNOWN_DIMENSION_VALUE,
    }
    for dimension in REQUEST_BREAKDOWNS:
        emf.add_dimensions(**{dimension.value: values[dimension]})
    emf.flush_metrics()
    if status == 429:
        throttled = _provider()
        throttled.add_metric(name=Metric.THROTTLED, unit=unit(Metric.THROTTLED), value=1)
        throttled.add_dimensions(**{Dimension.LIMIT.value: limit or "unknown"})
        throttled.flush_metrics()


def record_outcome(outcome: Outcome) -> None:
    """One log line and the EMF metrics per finished request. No secrets: ids, numbers, model names."""
    usage = outcome.usage
    end = outcome.finished_at
    latency_ms = _ms(outcome.started, end) if end is not None else None
    logger.info(
        "request finished",
        extra={
            "request_id": outcome.request_id,
            "tenant": outcome.identity.tenant,
            "consumer": outcome.identity.consumer,
            "key_id": outcome.identity.key_id,
            "model": outcome.model,
            "requested_model": outcome.requested_model,
            "target": outcome.target,
            "failed_attempts": outcome.attempts,
            "status": outcome.status,
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "usage_source": usage.source if usage else None,
            "cost_usd": outcome.cost_usd,
            "latency_ms": latency_ms,
            "error": outcome.error,
            "top_ups": outcome.top_ups,
            "cut_by_budget": outcome.cut_by_budget,
            "overrun_tokens": outcome.overrun_tokens,
        },
    )
    with _recorded_lock:
        _recorded[outcome.request_id] = None
        while len(_recorded) > _RECENT:
            _recorded.popitem(last=False)
    try:
        _emit_requests(
            outcome.status,
            outcome.model,
            outcome.target,
            outcome.identity.plan,
            "upstream" if outcome.status == 429 else None,
        )
        emf = _provider()
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        emf.add_metric(name=Metric.TOKENS_IN, unit=unit(Metric.TOKENS_IN), value=prompt)
        emf.add_metric(name=Metric.TOKENS_OUT, unit=unit(Metric.TOKENS_OUT), value=completion)
        emf.add_metric(
            name=Metric.COST_MICRO_USD, unit=unit(Metric.COST_MICRO_USD), value=math.ceil(outcome.cost_usd * 1_000_000)
        )
        for metric, value in (
            (Metric.TIME_TO_FIRST_BYTE, _ms(outcome.started, outcome.first_byte_at)),
            (Metric.DURATION, latency_ms),
            (Metric.GATEWAY_OVERHEAD, _ms(outcome.started, outcome.upstream_called_at)),
        ):
            if value is not None:
                emf.add_metric(name=metric, unit=unit(metric), value=value)
        emf.add_metric(name=Metric.FAILOVERS, unit=unit(Metric.FAILOVERS), value=len(outcome.attempts))
        emf.add_metric(
            name=Metric.SETTLEMENT_FAILURES,
            unit=unit(Metric.SETTLEMENT_FAILURES),
            value=1 if outcome.settlement_failed else 0,
        )
        overrun = outcome.overrun_tokens > 0 or outcome.cost_usd > outcome.reserved_usd > 0  # top-ups included
        emf.add_metric(name=Metric.OVERRUNS, unit=unit(Metric.OVERRUNS), value=1 if overrun else 0)
        emf.flush_metrics()
    except Exception as error:  # metrics never fail a request
        logger.warning("could not emit metrics", extra={"error_type": type(error).__name__})


def record_rejection(error: GatewayError, request_id: str, model: str | None = None, tier: str | None = None) -> None:
    """Metrics for a request answered with an error before it had an outcome (validation, quota
    429s, every circuit open...). Requests already recorded by :func:`record_outcome` are skipped."""
    with _recorded_lock:
        if request_id in _recorded:
            return
    try:
        # A quota 429's type names the limit that refused it (requests, tokens, usd).
        _emit_requests(error.status, model, None, tier, error.type if error.status == 429 else None)
    except Exception as failure:
        logger.warning("could not emit metrics", extra={"error_type": type(failure).__name__})


def record_breaker_open(target: str, metric: Metric = Metric.BREAKER_OPENS) -> None:
    """A circuit opened (or re-opened after a failed probe)."""
    try:
        emf = _provider()
        emf.add_metric(name=metric, unit=unit(metric), value=1)
        emf.add_dimensions(**{Dimension.TARGET.value: target})
        emf.flush_metrics()
    except Exception as error:
        logger.warning("could not emit metrics", extra={"error_type": type(error).__name__})


def record_tenant_breaker_open(target: str) -> None:
    """One tenant's own circuit for ``target`` opened: that tenant alone skips it."""
    record_breaker_open(target, Metric.TENANT_BREAKER_OPENS)
