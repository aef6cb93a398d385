"""Local mode's stand-ins for the settlement consumer Lambda and the reaper's schedule: one daemon
thread that drains the settlement retry queue (moto SQS) and runs the reaper, every few seconds."""

from __future__ import annotations

import logging
import threading
from typing import Any

from quotagate.quota.ledger import DynamoQuotaLedger
from quotagate.quota.reaper import ReservationReaper, margin_seconds_from_env, max_request_seconds_from_env
from quotagate.quota.settlements import PendingSettlement

QUEUE_NAME = "quotagate-settlements"
log = logging.getLogger("quotagate_tools.local.settlements")


def create_queue(sqs: Any) -> str:
    return str(sqs.create_queue(QueueName=QUEUE_NAME)["QueueUrl"])


def drain_queue(sqs: Any, queue_url: str, ledger: DynamoQuotaLedger) -> int:
    """Apply every queued settlement once (like the consumer Lambda); a failure stays queued."""
    applied = 0
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return applied
        for message in messages:
            try:
                PendingSettlement.from_json(message["Body"]).apply(ledger)
            except Exception as error:  # stays on the queue (visible again after its timeout)
                log.warning("queued settlement failed: %s", type(error).__name__)
                continue
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            applied += 1


def start_worker(dynamodb: Any, sqs: Any, queue_url: str, interval_seconds: float = 10.0) -> threading.Event:
    """Drain the queue and reap abandoned reservations in a daemon thread until the event is set."""
    stop = threading.Event()
    ledger = DynamoQuotaLedger(dynamodb)
    reaper = ReservationReaper(
        dynamodb, max_request_seconds=max_request_seconds_from_env(), margin_seconds=margin_seconds_from_env()
    )

    def run() -> None:
        while not stop.wait(interval_seconds):
            try:
                drain_queue(sqs, queue_url, ledger)
                reaper.reap()
            except Exception as error:  # keep the worker alive; the next round tries again
                log.warning("settlement worker round failed: %s", type(error).__name__)

    threading.Thread(target=run, name="settlement-worker", daemon=True).start()
    return stop
