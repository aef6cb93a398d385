"""What a refused request may write (issue 18, item 6): one request in the caller's request-count
windows (after the answer, so tests wait for it), and nothing else in the quota table."""

from __future__ import annotations

import json
import time

import boto3

from quotagate import tables
from quotagate.quota.windows import WINDOW_LIMITS, WindowUnit, window_bounds

REQUEST_WINDOWS = tuple(name for name, (unit, _) in WINDOW_LIMITS.items() if unit == WindowUnit.REQUESTS)


def is_request_window(item: dict) -> bool:
    return any(item.get("sk", {}).get("S", "").startswith(f"{name}#") for name in REQUEST_WINDOWS)


def scan_but_request_counts(*specs: tables.TableSpec) -> dict[str, list]:
    """Every item of the tables (sorted, comparable) except the request-count windows' items, which
    a refused request is allowed to move: no tokens, no dollars, no reservation item."""
    client = boto3.client("dynamodb")
    return {
        spec.name(): sorted(
            json.dumps(item, sort_keys=True)
            for item in client.scan(TableName=spec.name(), ConsistentRead=True).get("Items", [])
            if not (spec is tables.QUOTA and is_request_window(item))
        )
        for spec in specs
    }


def recent_requests(scope_pk: str, limit: str = "requests_per_minute") -> int:
    """The scope's requests in the windows of the last 15 s (a test's request may have been counted
    in the window before the one the test reads in)."""
    from tests.quota_table import QuotaTable

    table = QuotaTable(boto3.client("dynamodb"))
    now = time.time()
    windows = {window_bounds(WINDOW_LIMITS[limit][1], at)[0]: at for at in (now - 15, now)}
    return sum(table.usage_of(scope_pk, limit, at=at) for at in windows.values())


def wait_requests_counted(stack, scope_pk: str, expected: int, limit: str = "requests_per_minute") -> int:
    """The scope's recent requests once they reach ``expected`` (or after 10 s): a refusal is
    counted after its answer is sent."""
    deadline = time.monotonic() + 10
    while recent_requests(scope_pk, limit) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # a second (wrong) count would land by now
    return recent_requests(scope_pk, limit)
