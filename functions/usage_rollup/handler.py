"""Usage rollup Lambda: SQS (fed by the ``quotagate`` bus's rule for ``Request Settled``) → usage
aggregates, exactly once per request (see quotagate.usage.rollup), with Powertools batch
processing: a record that fails is reported in ``batchItemFailures`` and only it is retried (after
``maxReceiveCount`` receives it goes to the dead-letter queue, whose depth has an alarm)."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

from quotagate.usage.events import SettledRequest
from quotagate.usage.exceptions import InvalidEvent
from quotagate.usage.pipe import EVENT_SOURCE, REQUEST_SETTLED

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

logger = Logger(service="quotagate-usage_rollup")
processor = BatchProcessor(event_type=EventType.SQS)

_rollup: Any = None
_lock = threading.Lock()


def _get_rollup() -> Any:
    global _rollup
    if _rollup is None:
        with _lock:
            if _rollup is None:
                from quotagate import aws, settings
                from quotagate.usage.events import EventBridgePublisher
                from quotagate.usage.pipe import BUS_NAME
                from quotagate.usage.rollup import UsageRollup, parse_thresholds

                bus = settings.env(settings.EVENT_BUS, BUS_NAME) or BUS_NAME
                publisher = EventBridgePublisher(aws.client("events"), bus)
                _rollup = UsageRollup(
                    aws.client("dynamodb"),
                    publisher,
                    thresholds=parse_thresholds(settings.env(settings.BUDGET_THRESHOLDS)),
                )
    return _rollup


def reset() -> None:
    """Forget cached clients (tests, local mode after moto changes)."""
    global _rollup
    with _lock:
        _rollup = None


def record_handler(record: SQSRecord) -> None:
    try:
        envelope = json.loads(record.body)
        if envelope.get("source") != EVENT_SOURCE or envelope.get("detail-type") != REQUEST_SETTLED:
            raise InvalidEvent(f"not a {REQUEST_SETTLED} event")
        event = SettledRequest.parse(envelope.get("detail"))
    except (ValueError, AttributeError) as error:
        # Never valid on a retry either: it fails and, after its receives, waits in the DLQ.
        logger.error("invalid usage event", extra={"message_id": record.message_id, "error": str(error)})
        raise
    applied = _get_rollup().apply(event)
    logger.debug(
        "usage event",
        extra={
            "request_id": event.request_id,
            "applied": applied.applied,
            "thresholds_published": applied.thresholds_published,
        },
    )


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return dict(
        process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
    )
