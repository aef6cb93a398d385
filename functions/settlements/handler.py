"""The settlement retry consumer (SQS, with a dead-letter queue): applies settlements the proxy
could not write in time, exactly once (see ``quotagate.quota.settlements``). Powertools batch
processing reports partial failures, so only the messages that failed are delivered again; after
the queue's maxReceiveCount they move to the dead-letter queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

from quotagate import aws
from quotagate.quota.ledger import DynamoQuotaLedger
from quotagate.quota.settlements import PendingSettlement

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

logger = Logger(service="quotagate-settlements")
processor = BatchProcessor(event_type=EventType.SQS)
_ledger: DynamoQuotaLedger | None = None


def ledger() -> DynamoQuotaLedger:
    global _ledger
    if _ledger is None:
        _ledger = DynamoQuotaLedger(aws.quota_client())
    return _ledger


def reset() -> None:
    global _ledger
    _ledger = None


def record_handler(record: SQSRecord) -> None:
    pending = PendingSettlement.from_json(record.body)
    applied = pending.apply(ledger())
    # False: it was settled already (an earlier delivery, or the proxy's own write did land) or the
    # reaper expired it first; either way nothing more is to be done.
    logger.info(
        "settlement retried", extra={"request_id": pending.request_id, "kind": pending.kind, "applied": applied}
    )


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> Any:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
