"""The usage pipeline on moto, for ``make dev`` and the tests.

moto records the quota table's stream and routes ``PutEvents`` through rules to SQS, but runs no
EventBridge Pipes and no Lambda event-source mappings. This module stands in for those two:

- the pipe: read the stream (``dynamodbstreams.get_records``), keep and reshape records with the
  pipe's own filter and input template (:mod:`quotagate.usage.pipe`, the definition the CDK pipe
  is built from), ``PutEvents`` on moto's ``quotagate`` bus;
- the event-source mapping: receive from the rollup queue (fed by the same rule as in the stack),
  invoke the real rollup handler with an SQS event, delete what it did not report as failed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quotagate import tables
from quotagate.usage.pipe import BUS_NAME, ROLLUP_RULE_PATTERN, event_entry

if TYPE_CHECKING:
    from collections.abc import Callable

ROLLUP_QUEUE = "quotagate-usage-rollup"
ROLLUP_DLQ = "quotagate-usage-rollup-dlq"
ROLLUP_RULE = "quotagate-request-settled-to-rollup"
MAX_RECEIVES = 5
log = logging.getLogger("quotagate_tools.local.usage")


@dataclass
class LocalUsagePipeline:
    dynamodb: Any
    streams: Any
    events: Any
    sqs: Any
    rollup_handler: Callable[[dict[str, Any], Any], dict[str, Any]]
    bus_name: str = BUS_NAME
    visibility_timeout: int = 1
    _iterators: dict[str, str] = field(default_factory=dict)
    _queue_url: str = ""
    _queue_arn: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    published: int = 0

    @classmethod
    def from_boto(cls, rollup_handler: Callable[[dict[str, Any], Any], dict[str, Any]]) -> LocalUsagePipeline:
        import boto3

        return cls(
            boto3.client("dynamodb"),
            boto3.client("dynamodbstreams"),
            boto3.client("events"),
            boto3.client("sqs"),
            rollup_handler,
        )

    # ---- resources -------------------------------------------------------------------------------

    def setup(self) -> None:
        """The bus, the rollup queue with its dead-letter queue, and the rule between them."""
        if self.bus_name not in {b["Name"] for b in self.events.list_event_buses()["EventBuses"]}:
            self.events.create_event_bus(Name=self.bus_name)
        dlq_url = self.sqs.create_queue(QueueName=ROLLUP_DLQ)["QueueUrl"]
        dlq_arn = self.sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self._queue_url = self.sqs.create_queue(
            QueueName=ROLLUP_QUEUE,
            Attributes={
                "VisibilityTimeout": str(self.visibility_timeout),
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVES}),
            },
        )["QueueUrl"]
        self._queue_arn = self.sqs.get_queue_attributes(QueueUrl=self._queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.events.put_rule(Name=ROLLUP_RULE, EventBusName=self.bus_name, EventPattern=json.dumps(ROLLUP_RULE_PATTERN))
        self.events.put_targets(
            Rule=ROLLUP_RULE, EventBusName=self.bus_name, Targets=[{"Id": "rollup-queue", "Arn": self._queue_arn}]
        )
        self._open_stream()

    def _open_stream(self) -> None:
        description = self.dynamodb.describe_table(TableName=tables.QUOTA.name())["Table"]
        stream_arn = description.get("LatestStreamArn")
        if not stream_arn:
            raise RuntimeError(f"{tables.QUOTA.name()} has no stream")
        for shard in self.streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]:
            if shard["ShardId"] not in self._iterators:
                self._iterators[shard["ShardId"]] = self.streams.get_shard_iterator(
                    StreamArn=stream_arn,
                    ShardId=shard["ShardId"],
                    ShardIteratorType="TRIM_HORIZON",
                )["ShardIterator"]

    # ---- one pass of each stage --------------------------------------------------------------

    def pump_stream(self) -> int:
        """Stream → filter → transform → PutEvents. Returns how many events were put."""
        entries = []
        for shard_id, iterator in list(self._iterators.items()):
            while iterator:
                response = self.streams.get_records(ShardIterator=iterator, Limit=1000)
                records = response.get("Records", [])
                iterator = response.get("NextShardIterator")
                for record in records:
                    entry = event_entry(record, self.bus_name)
                    if entry is not None:
                        entries.append(entry)
                if not records:
                    break
            if iterator:
                self._iterators[shard_id] = iterator
        for start in range(0, len(entries), 10):
            batch = entries[start : start + 10]
            response = self.events.put_events(Entries=batch)
            if response.get("FailedEntryCount"):
                raise RuntimeError(f"PutEvents failed: {response}")
        self.published += len(entries)
        return len(entries)

    def pump_queue(self) -> int:
        """Rollup queue → rollup handler (what a Lambda event-source mapping does). Returns how
        many messages were received."""
        from quotagate_tools.local.apigateway import FakeLambdaContext

        received = self.sqs.receive_message(
            QueueUrl=self._queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=0
        ).get("Messages", [])
        if not received:
            return 0
        event = {"Records": [sqs_record(m, self._queue_arn) for m in received]}
        response = self.rollup_handler(event, FakeLambdaContext("quotagate-usage-rollup"))
        failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
        done = [m for m in received if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            self.sqs.delete_message_batch(
                QueueUrl=self._queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done[start : start + 10])
                ],
            )
        return len(received)

    def queued(self) -> int:
        """Messages in the rollup queue, visible or in flight (a failed one comes back)."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self._queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def drain(self, timeout: float = 30.0, quiet_passes: int = 2) -> None:
        """Pump both stages until nothing moves for ``quiet_passes`` passes and the rollup queue is
        empty, including messages waiting to be retried (tests)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < quiet_passes:
            if time.monotonic() > deadline:
                raise TimeoutError("usage pipeline did not drain")
            with self._lock:
                moved = self.pump_stream() + self.pump_queue()
            if moved == 0 and self.queued():
                time.sleep(0.2)  # a failed message becomes visible again after the visibility timeout
                continue
            quiet = quiet + 1 if moved == 0 else 0

    # ---- in the background (make dev) --------------------------------------------------------

    def start(self, interval_seconds: float = 0.5) -> threading.Event:
        def run() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    with self._lock:
                        while self.pump_stream() + self.pump_queue():
                            pass
                except Exception:
                    log.exception("local usage pipeline pass failed; retrying")

        threading.Thread(target=run, name="usage-pipeline", daemon=True).start()
        return self._stop


def sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """An SQS message as a Lambda SQS event record."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(":")[3] if queue_arn.count(":") >= 5 else "us-east-1",
    }
