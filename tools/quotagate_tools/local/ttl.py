"""DynamoDB deletes items whose TTL attribute has passed; moto never does. Local mode sweeps them
so a long ``make dev`` session keeps small tables (moto's transactions copy whole tables)."""

from __future__ import annotations

import threading
import time
from typing import Any

from quotagate import tables


def sweep_expired(client: Any, now: float | None = None) -> int:
    """Delete every item whose TTL attribute is in the past; returns how many were deleted."""
    now = time.time() if now is None else now
    deleted = 0
    for spec in tables.ALL_TABLES:
        if not spec.ttl_attribute:
            continue
        keys = [spec.partition_key] + ([spec.sort_key] if spec.sort_key else [])
        paginator = client.get_paginator("scan")
        pages = paginator.paginate(
            TableName=spec.name(),
            FilterExpression="#ttl < :now",
            ProjectionExpression=", ".join(f"#k{i}" for i in range(len(keys))),
            ExpressionAttributeNames={"#ttl": spec.ttl_attribute, **{f"#k{i}": k for i, k in enumerate(keys)}},
            ExpressionAttributeValues={":now": {"N": str(int(now))}},
        )
        for page in pages:
            for item in page.get("Items", []):
                client.delete_item(TableName=spec.name(), Key=item)
                deleted += 1
    return deleted


def start_sweeper(client: Any, interval_seconds: float = 60.0) -> threading.Event:
    """Sweep in a daemon thread until the returned event is set."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_seconds):
            try:
                sweep_expired(client)
            except Exception:  # noqa: S112 - a failed sweep is retried on the next tick
                continue

    threading.Thread(target=run, name="ttl-sweeper", daemon=True).start()
    return stop
