"""Helpers for usage-pipeline tests: a subscriber on the bus (what a SaaS backend adds), and the
expected aggregates computed from the quota ledger's settled reservations."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

from quotagate import tables
from quotagate.usage.periods import Granularity, period_label
from quotagate.usage.pipe import BUS_NAME


class BusSubscriber:
    """A rule on the ``quotagate`` bus matching every Quotagate event, delivering to a queue."""

    def __init__(self, events: Any, sqs: Any, name: str = "test-subscriber") -> None:
        self.sqs = sqs
        self.queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name=name, EventBusName=BUS_NAME, EventPattern=json.dumps({"source": ["quotagate"]}))
        events.put_targets(Rule=name, EventBusName=BUS_NAME, Targets=[{"Id": "q", "Arn": arn}])
        self.received: list[dict[str, Any]] = []

    def collect(self) -> list[dict[str, Any]]:
        """Every event delivered so far (accumulated across calls)."""
        while True:
            messages = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return self.received
            for message in messages:
                self.received.append(json.loads(message["Body"]))
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )

    def of_type(self, detail_type: str) -> list[dict[str, Any]]:
        return [e for e in self.collect() if e["detail-type"] == detail_type]


COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "usd_micros")


def expected_aggregates(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, int]]:
    """(pk, sk) -> counters, from usage records (settled reservation items' ``usage_record``)."""
    totals: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for record in records:
        key = record["key_id"] or f"jwt:{record['subject']}"
        for granularity in Granularity:
            sk = f"{granularity}#{period_label(granularity, record['started_at_ms'] / 1000)}"
            for pk in (
                f"tenant#{record['tenant']}",
                f"tenant#{record['tenant']}#key#{key}",
                f"tenant#{record['tenant']}#model#{record['model']}",
            ):
                counter = totals[(pk, sk)]
                counter["requests"] += 1
                counter["prompt_tokens"] += record["prompt_tokens"]
                counter["completion_tokens"] += record["completion_tokens"]
                counter["total_tokens"] += record["prompt_tokens"] + record["completion_tokens"]
                counter["usd_micros"] += record["cost_usd_micros"]
                counter[f"outcome_{record['outcome']}"] += 1
    return {k: dict(v) for k, v in totals.items()}


def stored_aggregates(dynamodb: Any) -> dict[tuple[str, str], dict[str, int]]:
    """(pk, sk) -> counters of every aggregate item in the usage table."""
    found: dict[tuple[str, str], dict[str, int]] = {}
    for page in dynamodb.get_paginator("scan").paginate(TableName=tables.USAGE.name()):
        for item in page["Items"]:
            pk = item["pk"]["S"]
            if not pk.startswith("tenant#"):
                continue
            found[(pk, item["sk"]["S"])] = {
                name: int(value["N"])
                for name, value in item.items()
                if "N" in value and (name in COUNTERS or name.startswith("outcome_"))
            }
    return found
