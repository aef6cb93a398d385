"""Logging and metrics for the proxy with Powertools. The ASGI app is not a Lambda handler, so
metrics are flushed per request (Powertools' decorators cannot wrap it)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

if TYPE_CHECKING:
    from quotagate.logic.gateway import Outcome

logger = Logger(service="quotagate-proxy")
metrics = Metrics(namespace="Quotagate", service="proxy")


def record_outcome(outcome: Outcome) -> None:
    """One log line and one EMF blob per finished request. No secrets: ids, numbers, model names."""
    usage = outcome.usage
    latency_ms = round((time.monotonic() - outcome.started) * 1000, 1)
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
        },
    )
    try:
        metrics.add_dimension(name="model", value=outcome.model)
        metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
        if usage:
            metrics.add_metric(name="PromptTokens", unit=MetricUnit.Count, value=usage.prompt_tokens)
            metrics.add_metric(name="CompletionTokens", unit=MetricUnit.Count, value=usage.completion_tokens)
        if outcome.error:
            metrics.add_metric(name="UpstreamErrors", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="LatencyMs", unit=MetricUnit.Milliseconds, value=latency_ms)
        metrics.flush_metrics()
    finally:
        metrics.clear_metrics()  # each request is its own metric set
