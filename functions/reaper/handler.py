"""The reservation reaper Lambda (EventBridge schedule): closes reservations that no settlement
will close — status ``expired``, charge kept (see ``quotagate.quota.reaper``)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from quotagate import aws
from quotagate.quota.reaper import ReservationReaper, margin_seconds_from_env, max_request_seconds_from_env

logger = Logger(service="quotagate-reaper")


def build_reaper() -> ReservationReaper:
    return ReservationReaper(
        aws.client("dynamodb"),
        max_request_seconds=max_request_seconds_from_env(),
        margin_seconds=margin_seconds_from_env(),
    )


@logger.inject_lambda_context
def lambda_handler(event: Any, context: Any) -> dict[str, int]:
    result = build_reaper().reap()
    if result.expired:
        # Each one is a request whose environment died before it settled: worth a look.
        logger.warning("expired abandoned reservations", extra={"expired": result.expired, "cutoff": result.cutoff})
    return {"expired": result.expired, "skipped": result.skipped}
