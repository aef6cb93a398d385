"""Usage rollup throughput and DynamoDB writes per event, against moto (served one call at a time).

N ``Request Settled`` events (fixed seed: 2 tenants, 3 keys, 3 models, budgets on the keys) go
through the real rollup handler in SQS batches of 10, then every event is delivered once more
(duplicates). A botocore hook counts the DynamoDB calls and the items each one writes.

moto parses every update expression in Python, so the absolute events/s says little about
DynamoDB; the writes per event are what DynamoDB bills.

Usage: python bench/rollup.py [--events 300]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_events(count: int, seed: int = 1) -> list[dict]:
    from quotagate.usage.pipe import SCHEMA_VERSION
    from quotagate.usage.record import FIELDS, reservation_record, settled_record

    rng = random.Random(seed)
    keys = [("acme", "k-alice"), ("acme", "k-bob"), ("globex", "k-carol")]
    models = ["chat-default", "chat-pro", "mock-gpt"]
    events = []
    now = time.time()
    for i in range(count):
        tenant, key = keys[i % 3]
        record = reservation_record(
            request_id=f"bench-{seed}-{i}",
            tenant=tenant,
            consumer=key.removeprefix("k-"),
            key_id=key,
            auth_type="api_key",
            plan="pro",
            requested_model=models[i % 3],
            model=models[i % 3],
            prompt_tokens=50,
            completion_tokens=256,
            cost_usd_micros=900,
            started_at=now - rng.uniform(0, 3600),
            budgets={"budget_key_tokens_per_day": 1_000_000, "budget_tenant_usd_per_month": 50_000_000},
        )
        record = settled_record(
            record,
            target="mock/mock-gpt",
            prompt_tokens=rng.randint(5, 200),
            completion_tokens=rng.randint(0, 256),
            cost_usd_micros=rng.randint(1, 900),
            usage_source="provider",
            outcome="ok",
            http_status=200,
            time_to_first_byte_ms=20,
            duration_ms=300,
            failovers=0,
        )
        values = {name: str(int(record[name])) if kind == "N" else str(record[name]) for name, kind in FIELDS.items()}
        detail = {"schema_version": SCHEMA_VERSION, "status": "settled", **values}
        events.append({"source": "quotagate", "detail-type": "Request Settled", "detail": detail})
    return events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "ERROR",
            "POWERTOOLS_TRACE_DISABLED": "true",
        }
    )
    import boto3

    from quotagate_tools.local.motoserver import start_moto_server

    moto_url, stop_moto = start_moto_server()
    os.environ["AWS_ENDPOINT_URL"] = moto_url
    calls: collections.Counter[str] = collections.Counter()
    items: collections.Counter[str] = collections.Counter()

    def before(model, params, **_):  # type: ignore[no-untyped-def]  # API parameters, before serialising
        if model.service_model.service_name != "dynamodb":
            return
        calls[model.name] += 1
        if model.name == "TransactWriteItems":
            items[model.name] += len(params.get("TransactItems", []))
        elif model.name in ("PutItem", "UpdateItem", "DeleteItem"):
            items[model.name] += 1

    boto3.setup_default_session()
    boto3.DEFAULT_SESSION.events.register("before-parameter-build.dynamodb", before)  # type: ignore[union-attr]
    from functions.usage_rollup.handler import lambda_handler
    from quotagate import tables
    from quotagate_tools.local.apigateway import FakeLambdaContext
    from quotagate_tools.local.usage_pipeline import sqs_record

    tables.create_all(boto3.client("dynamodb"))
    boto3.client("events").create_event_bus(Name="quotagate")
    events = make_events(args.events)
    calls.clear()
    items.clear()

    def deliver(batch_events: list[dict]) -> float:
        started = time.perf_counter()
        for start in range(0, len(batch_events), 10):
            records = [
                sqs_record(
                    {"MessageId": str(i), "ReceiptHandle": "r", "Body": json.dumps(e)},
                    "arn:aws:sqs:us-east-1:123456789012:q",
                )
                for i, e in enumerate(batch_events[start : start + 10])
            ]
            response = lambda_handler({"Records": records}, FakeLambdaContext("rollup"))
            assert response == {"batchItemFailures": []}, response
        return time.perf_counter() - started

    try:
        first = deliver(events)
        first_calls, first_items = dict(calls), dict(items)
        calls.clear()
        items.clear()
        again = deliver(events)
    finally:
        stop_moto()
    n = len(events)
    print(f"{n} Request Settled events through the rollup handler (moto, one call at a time):")
    print(f"  first delivery : {n / first:7.1f} events/s")
    for name in sorted(first_calls):
        print(
            f"    {name:20s} {first_calls[name] / n:.2f} calls, "
            f"{first_items.get(name, 0) / n:.2f} items written per event"
        )
    print(
        f"  (a TransactWriteItems item costs 2 write units: {2 * first_items.get('TransactWriteItems', 0) / n:.0f} "
        f"WRU per event for items up to 1 KB, plus reads for the budget check)"
    )
    print(f"  duplicate delivery: {n / again:7.1f} events/s")
    for name in sorted(calls):
        print(
            f"    {name:20s} {calls[name] / n:.2f} calls, {items.get(name, 0) / n:.2f} items attempted per event "
            f"(a cancelled transaction writes nothing)"
        )


if __name__ == "__main__":
    main()
