"""Period-close Lambda (EventBridge schedule): one ``Usage Period Closed`` event per tenant for
each day and month that ended more than the grace period ago (see quotagate.usage.period_close)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

logger = Logger(service="quotagate-usage_period_close")


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    from quotagate import aws, settings
    from quotagate.usage.events import EventBridgePublisher
    from quotagate.usage.period_close import DEFAULT_GRACE_SECONDS, PeriodCloser
    from quotagate.usage.pipe import BUS_NAME

    grace = float(settings.env(settings.PERIOD_CLOSE_GRACE_SECONDS) or DEFAULT_GRACE_SECONDS)
    publisher = EventBridgePublisher(aws.client("events"), settings.env(settings.EVENT_BUS, BUS_NAME) or BUS_NAME)
    closed = PeriodCloser(aws.client("dynamodb"), publisher, grace_seconds=grace).run()
    logger.info("periods closed", extra={"closed": len(closed)})
    return {"closed": [{"tenant": c.tenant, "granularity": str(c.granularity), "period": c.period} for c in closed]}
