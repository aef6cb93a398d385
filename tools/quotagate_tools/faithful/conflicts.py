"""DynamoDB's contention rules in front of any store with the low-level client's calls (moto's
boto3 client, or :class:`.memory.InMemoryDynamo`), defined once in :class:`ConflictRules`:

- A ``TransactWriteItems`` keeps every item it touches locked for ``hold_seconds`` (the transaction
  is "in progress"), then commits (or fails its conditions) atomically. Another transaction that
  touches a locked item is cancelled with ``TransactionCanceledException``, reason
  ``TransactionConflict`` on that item and ``None`` on the others; a ``PutItem``/``UpdateItem``/
  ``DeleteItem`` on a locked item fails with ``TransactionConflictException``.
- One item takes at most ``item_write_units_per_second`` write units (1,000 on DynamoDB; one unit
  per write of up to 1 KB, two per item in a transaction). Past it: a transaction is cancelled with
  reason ``ThrottlingError`` (on-demand) or ``ProvisionedThroughputExceeded`` (provisioned) on the
  item; a single write fails with ``ThrottlingException`` / ``ProvisionedThroughputExceededException``.
- Every call takes ``latency_seconds`` (the round trip) before it reaches the store.
- ``ClientRequestToken``: a transaction repeated with the token of one that committed succeeds
  without applying twice (DynamoDB keeps tokens 10 minutes); while it is in progress, the repeat gets
  ``TransactionInProgressException``.
- :meth:`ConflictFaithfulClient.delay_commits` makes the next transactions commit only after the
  caller's read timeout has fired (``ReadTimeoutError``): the outcome the caller cannot know.

``calls`` counts calls per operation (and ``log`` records ``(operation, start, end)`` when asked),
so benchmarks and tests count store round trips.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ReadTimeoutError

from quotagate_tools.faithful.memory import cancelled, client_error

if TYPE_CHECKING:
    from collections.abc import Callable

CapacityMode = Literal["on_demand", "provisioned"]
TOKEN_RETENTION_SECONDS = 600.0
_THROTTLE_REASON = {"on_demand": "ThrottlingError", "provisioned": "ProvisionedThroughputExceeded"}
_THROTTLE_ERROR = {"on_demand": "ThrottlingException", "provisioned": "ProvisionedThroughputExceededException"}


@dataclass(frozen=True)
class ConflictRules:
    hold_seconds: float = 0.02  # how long a transaction keeps its items locked
    latency_seconds: float = 0.0  # each call's round trip before it reaches the store
    item_write_units_per_second: float = 1000.0  # DynamoDB's per-partition (so per-item) ceiling
    capacity_mode: CapacityMode = "on_demand"


@dataclass
class _Bucket:
    units: float
    at: float


@dataclass
class _DelayedCommits:
    count: int
    commit_after: float  # seconds after the call started
    client_timeout: float  # the caller gets ReadTimeoutError after this many seconds
    arrive_late: bool  # True: the request reaches the store only at commit_after (no lock before)
    pending: list[threading.Thread] = field(default_factory=list)


def _item_keys(actions: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    keys = []
    for action in actions:
        ((_, request),) = action.items()
        key = request["Key"] if "Key" in request else request["Item"]
        keys.append((request["TableName"], key["pk"]["S"], key.get("sk", {}).get("S", "")))
    return keys


class ConflictFaithfulClient:
    """Wraps ``store`` (a low-level DynamoDB client) with :class:`ConflictRules`."""

    def __init__(
        self,
        store: Any,
        rules: ConflictRules | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.rules = rules or ConflictRules()
        self._clock = clock
        self._sleep = sleep
        self._mutex = threading.Lock()
        self._locked_until: dict[tuple[str, str, str], float] = {}
        self._buckets: dict[tuple[str, str, str], _Bucket] = {}
        self._tokens: dict[str, tuple[float, bool]] = {}  # token -> (first seen, committed)
        self._delayed: _DelayedCommits | None = None
        self.calls: dict[str, int] = {}
        self.conflicts = 0
        self.throttles = 0
        self.log: list[tuple[str, float, float]] | None = None

    # ---- the rules ---------------------------------------------------------------------------

    def _count(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1

    def _over_capacity(self, key: tuple[str, str, str], units: float, now: float) -> bool:
        """Take ``units`` from the item's bucket (one second of capacity); True when it lacks them."""
        rate = self.rules.item_write_units_per_second
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(rate, now)
        bucket.units = min(rate, bucket.units + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.units < units:
            return True
        bucket.units -= units
        return False

    def delay_commits(
        self, count: int, commit_after: float, client_timeout: float, *, arrive_late: bool = False
    ) -> None:
        """The next ``count`` transactions commit ``commit_after`` seconds after they start, while
        their caller gets ``ReadTimeoutError`` after ``client_timeout`` seconds. They hold their
        items meanwhile, or (``arrive_late``) reach the store only then, like a delayed request."""
        with self._mutex:
            self._delayed = _DelayedCommits(count, commit_after, client_timeout, arrive_late)

    def _late_arrival(self, delay: float, request: dict[str, Any]) -> None:
        self._sleep(delay)
        try:
            self.transact_write_items(**request)
        except Exception:  # noqa: S110 - nobody waits for it: its effect (or none) is in the store
            pass

    def wait_for_delayed_commits(self) -> None:
        delayed = self._delayed
        for thread in list(delayed.pending if delayed else []):
            thread.join()

    def _refusal(self, keys: list[tuple[str, str, str]], now: float) -> Exception | None:
        """The cancellation of a transaction on these items now (a conflict, then capacity)."""
        locked = [self._locked_until.get(k, 0.0) > now for k in keys]
        if any(locked):
            self.conflicts += 1
            return cancelled(
                [
                    {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
                    if lock
                    else {"Code": "None"}
                    for lock in locked
                ]
            )
        throttled = [self._over_capacity(k, 2, now) for k in keys]
        if any(throttled):
            self.throttles += 1
            reason = _THROTTLE_REASON[self.rules.capacity_mode]
            return cancelled(
                [
                    {"Code": reason, "Message": "Throughput exceeds the current capacity for the item"}
                    if over
                    else {"Code": "None"}
                    for over in throttled
                ]
            )
        return None

    # ---- writes ------------------------------------------------------------------------------

    def _take_delay(self) -> _DelayedCommits | None:
        with self._mutex:
            delayed = self._delayed
            if delayed is None or delayed.count <= 0:
                return None
            delayed.count -= 1
            return delayed

    def transact_write_items(
        self, TransactItems: list[dict[str, Any]], ClientRequestToken: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        started = self._clock()
        self._count("TransactWriteItems")
        if self.rules.latency_seconds:
            self._sleep(self.rules.latency_seconds)
        delayed = self._take_delay()
        if delayed is not None and delayed.arrive_late:
            request = {"TransactItems": TransactItems, "ClientRequestToken": ClientRequestToken, **extra}
            late = threading.Thread(target=self._late_arrival, args=(delayed.commit_after, request), daemon=True)
            delayed.pending.append(late)
            late.start()
            self._sleep(delayed.client_timeout)
            raise ReadTimeoutError(endpoint_url="https://dynamodb.faithful.local/")
        keys = _item_keys(TransactItems)
        with self._mutex:
            now = self._clock()
            while self._tokens:  # oldest first (insertion order)
                oldest = next(iter(self._tokens))
                if now - self._tokens[oldest][0] < TOKEN_RETENTION_SECONDS:
                    break
                del self._tokens[oldest]
            if ClientRequestToken in self._tokens:
                if self._tokens[ClientRequestToken][1]:
                    return {}
                raise client_error(
                    "TransactWriteItems",
                    "TransactionInProgressException",
                    "The transaction with the given request token is already in progress.",
                )
            refusal = self._refusal(keys, now)
            if refusal is not None:
                raise refusal
            hold = delayed.commit_after if delayed else self.rules.hold_seconds
            for k in keys:
                self._locked_until[k] = now + hold
            if ClientRequestToken:
                self._tokens[ClientRequestToken] = (now, False)
        if delayed is not None:
            thread = threading.Thread(
                target=self._commit,
                args=(TransactItems, keys, ClientRequestToken, now, extra, delayed.commit_after),
                daemon=True,
            )
            delayed.pending.append(thread)
            thread.start()
            self._sleep(delayed.client_timeout)
            raise ReadTimeoutError(endpoint_url="https://dynamodb.faithful.local/")
        try:
            self._commit(TransactItems, keys, ClientRequestToken, now, extra, hold)
        finally:
            if self.log is not None:
                self.log.append(("TransactWriteItems", started, self._clock()))
        return {}

    def _commit(
        self,
        actions: list[dict[str, Any]],
        keys: list[tuple[str, str, str]],
        token: str | None,
        first_seen: float,
        extra: dict[str, Any],
        after: float,
    ) -> None:
        """Hold the locks ``after`` seconds, then apply (or fail the conditions) and release."""
        if after:
            self._sleep(after)
        committed = False
        try:
            self.store.transact_write_items(TransactItems=actions, **extra)
            committed = True
        finally:
            with self._mutex:
                for k in keys:
                    self._locked_until.pop(k, None)
                if token and committed:
                    self._tokens[token] = (first_seen, True)
                elif token:
                    self._tokens.pop(token, None)

    def _single_write(
        self, operation: str, call: Callable[..., dict[str, Any]], request: dict[str, Any]
    ) -> dict[str, Any]:
        started = self._clock()
        self._count(operation)
        if self.rules.latency_seconds:
            self._sleep(self.rules.latency_seconds)
        key = request["Key"] if "Key" in request else request["Item"]
        item = (request["TableName"], key["pk"]["S"], key.get("sk", {}).get("S", ""))
        with self._mutex:
            now = self._clock()
            if self._locked_until.get(item, 0.0) > now:
                self.conflicts += 1
                raise client_error(operation, "TransactionConflictException", "Transaction is ongoing for the item")
            if self._over_capacity(item, 1, now):
                self.throttles += 1
                raise client_error(
                    operation,
                    _THROTTLE_ERROR[self.rules.capacity_mode],
                    "Throughput exceeds the current capacity for the item",
                )
            # Applied under the mutex: a transaction cannot lock the item half-way through.
            try:
                return call(**request)
            finally:
                if self.log is not None:
                    self.log.append((operation, started, self._clock()))

    def update_item(self, **request: Any) -> dict[str, Any]:
        return self._single_write("UpdateItem", self.store.update_item, request)

    def put_item(self, **request: Any) -> dict[str, Any]:
        return self._single_write("PutItem", self.store.put_item, request)

    def delete_item(self, **request: Any) -> dict[str, Any]:
        return self._single_write("DeleteItem", self.store.delete_item, request)

    # ---- reads (the last committed values; reads never conflict here) -------------------------

    def _read(self, operation: str, call: Callable[..., dict[str, Any]], request: dict[str, Any]) -> dict[str, Any]:
        started = self._clock()
        self._count(operation)
        if self.rules.latency_seconds:
            self._sleep(self.rules.latency_seconds)
        try:
            return call(**request)
        finally:
            if self.log is not None:
                self.log.append((operation, started, self._clock()))

    def get_item(self, **request: Any) -> dict[str, Any]:
        return self._read("GetItem", self.store.get_item, request)

    def batch_get_item(self, **request: Any) -> dict[str, Any]:
        return self._read("BatchGetItem", self.store.batch_get_item, request)

    def query(self, **request: Any) -> dict[str, Any]:
        return self._read("Query", self.store.query, request)
