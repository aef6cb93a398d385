"""Hot keys and hot tenants on a conflict-faithful store (issue 20).

The project's QuotaService and DynamoQuotaLedger, unchanged, against quotagate_tools.faithful's
in-memory store with DynamoDB's rules (a transaction holds its items for the conflict window and
overlapping ones are cancelled; 1,000 write units/s per item), generous limits so that no refusal is
a budget's. Prints, per conflict window (10 and 20 ms) and per ledger layout:

- bursts: 100 requests at once on one key, 500 across ten keys of one tenant: answered share, and
  whether every window equals the settled usage (exactness);
- sustained open-loop rates per key and per tenant: the refused share (429 or 503) at each rate;
- store round trips before the first byte per request (the calls ``reserve`` makes: the proxy calls
  the upstream when it returns), mean and maximum.

``--before``: every window is one item (``quota.shards.MAX_SHARDS = 1``), as the ledger was before
hot windows were sharded. Usage: ``python bench/hotkeys.py [--before] [--quick]``.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "core"), str(ROOT / "tools"), str(ROOT)]

from quotagate.errors import GatewayError  # noqa: E402
from quotagate.quota import shards  # noqa: E402
from quotagate.quota.exceptions import LedgerBusy  # noqa: E402
from quotagate.quota.ledger import DynamoQuotaLedger  # noqa: E402
from quotagate.quota.reservation import ReservationRequest  # noqa: E402
from quotagate.quota.service import QuotaService  # noqa: E402
from quotagate.quota.settlements import InMemorySettlementQueue  # noqa: E402
from quotagate_tools.faithful import ConflictFaithfulClient, ConflictRules, InMemoryDynamo  # noqa: E402

TABLE = "quota-bench"
KEY_LIMITS = {"requests_per_minute": 10**7, "tokens_per_minute": 10**10}
TENANT_LIMITS = {"tokens_per_day": 10**12}
PROMPT, MAX_OUTPUT = 30, 70


class CountingClient:
    """Counts each thread's store calls (the round trips of the request it is serving)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._local = threading.local()

    def reset(self) -> None:
        self._local.calls = 0

    @property
    def calls(self) -> int:
        return getattr(self._local, "calls", 0)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._client, name)

        def call(**kwargs: Any) -> Any:
            self._local.calls = getattr(self._local, "calls", 0) + 1
            return target(**kwargs)

        return call


class Run:
    def __init__(self, hold: float) -> None:
        self.store = InMemoryDynamo()
        self.client = CountingClient(ConflictFaithfulClient(self.store, ConflictRules(hold_seconds=hold)))
        self.ledger = DynamoQuotaLedger(self.client, TABLE, snapshot_after_reserve=False)
        # Settlements that stay contended go to the retry queue, as in the gateway; ``exact`` lands
        # them first (the settlements Lambda's job) and ``queued`` says how many there were.
        self.queue = InMemorySettlementQueue()
        self.service = QuotaService(self.ledger, settlement_queue=self.queue)
        self.queued = 0
        self.sustained = 0.0  # answered requests per second (sustained runs)
        self.lock = threading.Lock()
        self.statuses: list[int] = []
        self.before_first_byte: list[int] = []
        self.settled_tokens: dict[str, int] = {}  # per key

    def one(self, key_id: str) -> None:
        request = ReservationRequest(
            uuid.uuid4().hex, key_id, "acme", KEY_LIMITS, TENANT_LIMITS, PROMPT, MAX_OUTPUT, 0.0
        )
        self.client.reset()
        try:
            reservation = self.service.reserve(request)
        except GatewayError as refused:
            with self.lock:
                self.statuses.append(int(refused.status))
            return
        calls = self.client.calls
        completion = 1 + int(request.request_id[:6], 16) % MAX_OUTPUT
        self.service.settle(reservation, PROMPT, completion, 0.0)
        with self.lock:
            self.statuses.append(200)
            self.before_first_byte.append(calls)
            self.settled_tokens[key_id] = self.settled_tokens.get(key_id, 0) + PROMPT + completion

    def exact(self) -> bool:
        """Every window equals the settled usage (requests and tokens, per key and the tenant's)."""
        self.queued += len(self.queue.messages)
        while self.queue.messages:
            try:
                self.queue.drain(self.ledger)
            except LedgerBusy:
                time.sleep(0.05)
        totals: dict[tuple[str, str], int] = {}
        for item in self.store.items(TABLE):
            pk = re.sub(r"#s\d+$", "", item["pk"]["S"])
            if pk.startswith("req#") or "used" not in item:
                continue
            name = item["sk"]["S"].split("#")[0]
            totals[(pk, name)] = totals.get((pk, name), 0) + int(item["used"]["N"])
        answered = self.statuses.count(200)
        expected = {("tenant#acme", "tokens_per_day"): sum(self.settled_tokens.values())}
        for key_id, tokens in self.settled_tokens.items():
            expected[(f"key#{key_id}", "tokens_per_minute")] = tokens
        requests = {k: v for k, v in totals.items() if k[1] == "requests_per_minute"}
        others = {k: v for k, v in totals.items() if k[1] != "requests_per_minute"}
        return others == expected and sum(requests.values()) == answered


def burst(hold: float, size: int, keys: int) -> Run:
    run = Run(hold)
    start = threading.Barrier(size)

    def go(i: int) -> None:
        start.wait()
        run.one(f"k{i % keys}")

    with ThreadPoolExecutor(size) as pool:
        list(pool.map(go, range(size)))
    return run


def sustained(hold: float, rate: float, seconds: float, keys: int) -> Run:
    """Open loop: request i starts at i / rate whatever happened to the others."""
    run = Run(hold)
    total = int(rate * seconds)
    with ThreadPoolExecutor(min(512, max(16, int(rate * 0.5)))) as pool:
        began = time.monotonic()
        for i in range(total):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(run.one, f"k{i % keys}")
    # What the ledger sustained: answered requests over the time from the first to the last answer
    # (below the offered rate when this machine cannot keep up, whatever the store does).
    run.sustained = run.statuses.count(200) / max(1e-9, time.monotonic() - began)
    return run


def share(run: Run) -> str:
    refused = len(run.statuses) - run.statuses.count(200)
    return f"{100 * refused / max(1, len(run.statuses)):.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", action="store_true", help="one item per window (no sharding)")
    parser.add_argument("--quick", action="store_true", help="fewer rates, shorter runs")
    args = parser.parse_args()
    if args.before:
        shards.MAX_SHARDS = 1
    layout = "one item per window (before)" if args.before else f"hot windows in up to {shards.MAX_SHARDS} shards"
    seconds = 1.5 if args.quick else 3.0
    rates = [50, 200, 500] if args.quick else [25, 50, 100, 200, 500, 700]
    print(f"# hot keys on the conflict-faithful in-memory store: {layout}")
    print("limits: key requests_per_minute + tokens_per_minute, tenant tokens_per_day (generous)\n")
    print(
        "| conflict window | burst | answered | exact (windows = settled usage) | settlements queued "
        "| store calls before first byte (mean / max) |"
    )
    print("|---|---|---|---|---|---|")
    for hold in (0.010, 0.020):
        for label, size, keys in (("100 on one key", 100, 1), ("500 on 10 keys of a tenant", 500, 10)):
            run = burst(hold, size, keys)
            calls = run.before_first_byte or [0]
            exact = "yes" if run.exact() else "NO"
            print(
                f"| {hold * 1000:.0f} ms | {label} | {100 * run.statuses.count(200) / size:.0f} % | {exact} | "
                f"{run.queued} | {sum(calls) / len(calls):.2f} / {max(calls)} |"
            )
    print("\nOffered open-loop rate; each cell: refused share, and the answered requests/s sustained")
    print(f"\n| conflict window | load | {' | '.join(f'{r}/s' for r in rates)} |")
    print(f"|---|---|{'---|' * len(rates)}")
    for hold in (0.010, 0.020):
        for label, keys in (("one key", 1), ("tenant, 10 keys", 10)):
            cells = []
            for rate in rates:
                run = sustained(hold, rate, seconds, keys)
                exact = run.exact()
                queued = f", {run.queued} queued" if run.queued else ""
                cells.append(f"{share(run)} refused, {run.sustained:.0f}/s{queued}" + ("" if exact else " (NOT exact)"))
            print(f"| {hold * 1000:.0f} ms | {label} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
