"""Quota ledger (data access): window counters and per-request reservations.

Two implementations of one protocol:

- :class:`DynamoQuotaLedger` — DynamoDB (table ``tables.QUOTA``). A reservation is ONE
  ``TransactWriteItems``: a guarded ``ADD used :n`` per window item plus a ``Put`` of the
  reservation item, so it is all-or-nothing and can never push a window past its limit, however
  many requests run at once. A settlement is ONE more ``TransactWriteItems`` (or a single
  ``UpdateItem`` when no window changes) that flips the reservation item from ``reserved`` to
  ``settled`` and applies the differences to the very window items that were reserved, so it
  happens exactly once.
- :class:`InMemoryQuotaLedger` — the same semantics under a lock, for unit tests.

Items (pk / sk):

- ``key#<key_id>`` or ``tenant#<tenant>`` / ``<limit_name>#<window start, ISO UTC>``:
  ``used`` (integer units), ``limit`` (information only), ``expires_at`` (TTL: a day after the
  window ends).
- ``req#<request_id>`` / ``reservation``: ``status`` (:class:`ReservationStatus`: ``reserved`` →
  ``settled``, or ``expired`` by the reaper), the charges, the settlement (``adjustments``,
  ``usage``), a ``token`` per call, ``expires_at``, and the ``usage_record``
  (``quotagate.usage.record``): the billing record that the table's stream publishes as a
  ``Request Settled`` event when the status leaves ``reserved``.

Nothing relies on TTL for correctness.

Bounded time: the DynamoDB client gets ONE botocore attempt (see ``aws.quota_client``) and short
timeouts; the ledger's own retries carry the budget. They are idempotent (the same
``ClientRequestToken`` and the same item values on every attempt; a lost answer is recognised by
the call's token on the reservation item), never start when the budget (``reserve_seconds`` /
``settle_seconds``) would be passed by one more attempt of ``attempt_seconds``, and never sleep
after the last attempt. When an attempt's outcome is unknown (a timeout, a connection error, a 5xx)
and the call still fails, :class:`LedgerUnavailable` says so: the caller must then settle the
request id with zero usage (safe whether or not the reservation committed).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from quotagate import settings, tables
from quotagate.quota.exceptions import LedgerBusy, LedgerUnavailable, QuotaExceeded, ReservationExists
from quotagate.quota.placement import Placement
from quotagate.quota.shards import random_shard, shard_count, shard_pk
from quotagate.quota.slots import (
    SlotChoice,
    lease_action,
    release_action,
    renew_request,
    slot_sk,
    slots_taken,
)
from quotagate.quota.windows import WindowCharge, WindowUnit, WindowUsage
from quotagate.usage.record import RECORD_ATTRIBUTE, to_attribute

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence


class ReservationStatus(StrEnum):
    """The life of a reservation item (the only place these values are written)."""

    RESERVED = "reserved"  # charged with the worst case, waiting for its settlement
    SETTLED = "settled"  # actual usage applied (or refunded to zero by a compensating settle)
    EXPIRED = "expired"  # closed by the reaper: never settled, the reserved charge is kept
    # A tombstone: the compensation of a reservation whose outcome was unknown landed before the
    # reservation did, so the late reservation's condition (``attribute_not_exists(pk)``) refuses it.
    CANCELLED = "cancelled"


RESERVATION_SK = "reservation"
# Reservation items are kept this long (a settlement arrives within the 15-minute Lambda limit).
RESERVATION_RETENTION_SECONDS = 2 * 86_400
# A settled reservation only has to outlive retries of its settlement; keep it an hour, not two days.
SETTLED_RETENTION_SECONDS = 3_600
MAX_TRANSACTION_ACTIONS = 100
# Attempts to count a refused request (a second one only when the first surely did not land).
COUNT_ATTEMPTS = 2
_COUNT_RNG = random.Random()  # spreads refused-request counts over shards; not a secret
# Open reservations are spread over this many partitions of the sparse ``reserved`` index.
RESERVED_SHARDS = 8


def reserved_shard(request_id: str) -> str:
    """The ``reserved`` index partition of a reservation (stable: crc32 of the request id)."""
    import zlib

    return f"r{zlib.crc32(request_id.encode()) % RESERVED_SHARDS}"


# Cancellation reason codes (and error codes) worth retrying: contention, not a verdict.
_RETRYABLE_REASONS = frozenset({"TransactionConflict", "ProvisionedThroughputExceeded", "ThrottlingError"})
_RETRYABLE_ERRORS = frozenset(
    {
        "TransactionConflictException",
        "TransactionInProgressException",
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
    }
)
# Server-side failures: the write may or may not have happened (retried, then compensated).
_UNKNOWN_OUTCOME_ERRORS = frozenset({"InternalServerError", "ServiceUnavailable", "InternalFailure"})
# One attempt is bounded by the quota client's timeouts (``aws.QUOTA_CONNECT_TIMEOUT`` +
# ``aws.QUOTA_READ_TIMEOUT``); the budgets below are what a caller waits at most.
DEFAULT_ATTEMPT_SECONDS = 0.75
DEFAULT_RESERVE_SECONDS = 2.0
DEFAULT_SETTLE_SECONDS = 5.0
DEFAULT_RESERVE_ATTEMPTS = 5
DEFAULT_SETTLE_ATTEMPTS = 8
# Attempts re-placed on other shards of a hot window: at most this many times max_attempts in all,
# a few milliseconds apart.
REPLACED_ATTEMPTS_FACTOR = 4
REPLACED_DELAY_SECONDS = 0.005


class QuotaLedger(Protocol):
    @property
    def blocking(self) -> bool:
        """Whether its calls wait on I/O: the proxy then makes them in a worker thread, never on
        the event loop (a thread hand-off costs more than a call that waits on nothing)."""
        ...

    def reserve(
        self, request_id: str, charges: Sequence[WindowCharge], record: Mapping[str, Any] | None = None
    ) -> list[WindowUsage]:
        """Reserve every charge or none. Raises QuotaExceeded, ReservationExists, LedgerBusy.
        ``record``: the usage record (quotagate.usage.record) the reservation item carries."""
        ...

    def settle(
        self,
        request_id: str,
        adjustments: Sequence[tuple[WindowCharge, int]],
        usage: Mapping[str, int] | None = None,
        record: Mapping[str, Any] | None = None,
        compensating: bool = False,
    ) -> bool:
        """Apply ``delta`` to each reserved window, once. False if already settled (or unknown).
        ``compensating``: the zero-usage settle of a reservation whose outcome is unknown; when no
        reservation exists yet it leaves a ``cancelled`` tombstone, so one landing later is refused."""
        ...

    def top_up(self, request_id: str, increases: Sequence[tuple[WindowCharge, int]]) -> bool:
        """Add ``n`` to each reserved window (guard ``used <= limit - n``) and to the reservation
        item's reserved totals, all or nothing, while it is still ``reserved``. False: refused
        (a window lacks room, or the reservation is settled). Raises LedgerBusy when unsure."""
        ...

    def read_used(self, charges: Sequence[WindowCharge]) -> list[int | None]:
        """``used`` of each charge's window item now (None: unknown), best effort, for headers."""
        ...

    def renew_leases(self, request_id: str, charges: Sequence[WindowCharge]) -> bool:
        """Extend the concurrency slot leases the request holds (quota.slots); False if lost."""
        ...

    def count_requests(self, charges: Sequence[WindowCharge]) -> None:
        """Add each charge's amount to its request-count window, unconditionally (a request the
        gateway refused still counts: a later reservation's guard sees it). No reservation item."""
        ...


def check_charges(charges: Sequence[WindowCharge]) -> list[WindowCharge]:
    """Validate a reservation's charges (transaction limits, no item twice, sane amounts)."""
    charges = list(charges)
    if len(charges) + 1 > MAX_TRANSACTION_ACTIONS:
        raise ValueError(f"too many windows in one reservation ({len(charges)}; at most 99)")
    seen: set[tuple[str, str]] = set()
    for charge in charges:
        if charge.item_key in seen:
            raise ValueError(f"window {charge.pk} {charge.sk} charged twice in one reservation")
        seen.add(charge.item_key)
        if charge.amount < 0 or charge.limit < 0:
            raise ValueError(f"negative amount or limit in {charge}")
    return charges


def _passed(charge: WindowCharge) -> WindowUsage:
    """A window whose condition held: ``used <= limit - amount`` (a bound, not a value)."""
    return WindowUsage(charge, charge.max_used_before, exact=False)


def _impossible(charges: Sequence[WindowCharge]) -> QuotaExceeded | None:
    # An empty window item passes `attribute_not_exists(used)`, so a charge bigger than the whole
    # limit must be refused before it reaches the store.
    short = [WindowUsage(c, None) for c in charges if c.amount > c.limit]
    return QuotaExceeded(short[0].charge, None, short) if short else None


def _check_adjustments(adjustments: Sequence[tuple[WindowCharge, int]]) -> list[tuple[WindowCharge, int]]:
    adjustments = [(charge, int(delta)) for charge, delta in adjustments]
    if len(adjustments) + 1 > MAX_TRANSACTION_ACTIONS:
        raise ValueError("too many windows in one settlement")
    seen: set[tuple[str, str]] = set()
    for charge, delta in adjustments:
        if charge.item_key in seen:
            raise ValueError(f"window {charge.pk} {charge.sk} adjusted twice in one settlement")
        seen.add(charge.item_key)
        if charge.amount + delta < 0:
            raise ValueError(f"settlement would make actual usage negative in {charge.pk} {charge.sk}")
    return adjustments


def check_counted(charges: Sequence[WindowCharge]) -> list[WindowCharge]:
    """Only request counts are added without a reservation (never tokens, dollars or slots)."""
    charges = list(charges)
    if any(c.unit != WindowUnit.REQUESTS or c.amount < 0 for c in charges):
        raise ValueError("only request-count windows are counted without a reservation")
    return charges


def check_top_up(increases: Sequence[tuple[WindowCharge, int]]) -> list[tuple[WindowCharge, int]]:
    increases = [(charge, int(n)) for charge, n in increases if int(n) != 0]
    if len(increases) + 1 > MAX_TRANSACTION_ACTIONS:
        raise ValueError("too many windows in one top-up")
    if any(n < 0 for _, n in increases):
        raise ValueError("a top-up only adds")
    if len({c.item_key for c, _ in increases}) != len(increases):
        raise ValueError("a window topped up twice in one call")
    return increases


def top_up_totals(increases: Sequence[tuple[WindowCharge, int]]) -> dict[str, int]:
    """Per unit, what a top-up adds to the reservation (the largest over that unit's windows)."""
    totals: dict[str, int] = {}
    for charge, n in increases:
        totals[charge.unit] = max(totals.get(charge.unit, 0), n)
    return totals


# --------------------------------------------------------------------------------------------------
# In memory (unit tests)
# --------------------------------------------------------------------------------------------------


class InMemoryQuotaLedger:
    """Thread-safe fake with the DynamoDB ledger's semantics. ``calls`` counts ledger calls."""

    # Its calls wait on nothing: made on the event loop. A subclass is taken to wait (the test
    # doubles that stand for DynamoDB do) unless it says otherwise.
    blocking: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.blocking = cls.__dict__.get("blocking", True)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[tuple[str, str], int] = {}
        self._reservations: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, int] = {"reserve": 0, "settle": 0}

    def reserve(
        self, request_id: str, charges: Sequence[WindowCharge], record: Mapping[str, Any] | None = None
    ) -> list[WindowUsage]:
        charges = check_charges(charges)
        with self._lock:
            self.calls["reserve"] += 1
            impossible = _impossible(charges)
            if impossible:
                raise impossible
            if request_id in self._reservations:
                raise ReservationExists(request_id)
            short = [
                WindowUsage(c, self._used[c.item_key])
                for c in charges
                if c.item_key in self._used and self._used[c.item_key] > c.max_used_before
            ]
            if short:
                # Report what DynamoDB would: exact values for short windows, bounds for the rest.
                failed = {u.charge.item_key: u for u in short}
                observed = [failed.get(c.item_key) or _passed(c) for c in charges]
                raise QuotaExceeded(short[0].charge, short[0].used, short, observed)
            usages = []
            for c in charges:
                self._used[c.item_key] = self._used.get(c.item_key, 0) + c.amount
                usages.append(WindowUsage(c, self._used[c.item_key]))
            self._reservations[request_id] = {"status": ReservationStatus.RESERVED, "charges": list(charges)}
            if record is not None:
                self._reservations[request_id][RECORD_ATTRIBUTE] = dict(record)
            return usages

    def settle(
        self,
        request_id: str,
        adjustments: Sequence[tuple[WindowCharge, int]],
        usage: Mapping[str, int] | None = None,
        record: Mapping[str, Any] | None = None,
        compensating: bool = False,
    ) -> bool:
        adjustments = _check_adjustments(adjustments)
        usage_record = dict(record) if record is not None else None
        with self._lock:
            self.calls["settle"] += 1
            record = self._reservations.get(request_id)
            if record is None and compensating:
                self._reservations[request_id] = {"status": ReservationStatus.CANCELLED, "charges": []}
                return False
            if record is None or record["status"] != ReservationStatus.RESERVED:
                return False
            for charge, delta in adjustments:
                self._used[charge.item_key] = self._used.get(charge.item_key, 0) + delta
            record.update(
                status=ReservationStatus.SETTLED,
                adjustments=[(c.pk, c.sk, d) for c, d in adjustments],
                usage=dict(usage or {}),
            )
            if usage_record is not None:
                record[RECORD_ATTRIBUTE] = usage_record
            return True

    def top_up(self, request_id: str, increases: Sequence[tuple[WindowCharge, int]]) -> bool:
        increases = check_top_up(increases)
        with self._lock:
            self.calls["top_up"] = self.calls.get("top_up", 0) + 1
            record = self._reservations.get(request_id)
            if record is None or record["status"] != ReservationStatus.RESERVED:
                return False
            if any(self._used.get(c.item_key, 0) > c.limit - n for c, n in increases):
                return False
            for charge, n in increases:
                self._used[charge.item_key] = self._used.get(charge.item_key, 0) + n
            totals = record.setdefault("topped_up", {})
            for unit, n in top_up_totals(increases).items():
                totals[unit] = totals.get(unit, 0) + n
            return True

    def renew_leases(self, request_id: str, charges: Sequence[WindowCharge]) -> bool:
        return True  # its concurrency counter has no leases

    def count_requests(self, charges: Sequence[WindowCharge]) -> None:
        charges = check_counted(charges)
        with self._lock:
            self.calls["count_requests"] = self.calls.get("count_requests", 0) + 1
            for charge in charges:
                self._used[charge.item_key] = self._used.get(charge.item_key, 0) + charge.amount

    # Inspection of the fake (tests read what a DynamoDB table would hold; see tests/quota_table.py).
    def get_used(self, pk: str, sk: str) -> int:
        with self._lock:
            return self._used.get((pk, sk), 0)

    def read_used(self, charges: Sequence[WindowCharge]) -> list[int | None]:
        with self._lock:
            return [self._used.get(c.item_key) for c in charges]

    def get_reservation(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._reservations.get(request_id)
            return dict(record) if record else None


# --------------------------------------------------------------------------------------------------
# DynamoDB
# --------------------------------------------------------------------------------------------------


def _n(value: int) -> dict[str, str]:
    return {"N": str(int(value))}


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _int_attr(item: Mapping[str, Any] | None, name: str) -> int | None:
    if not item or name not in item or "N" not in item[name]:
        return None
    return int(item[name]["N"])


def _str_attr(item: Mapping[str, Any] | None, name: str) -> str | None:
    if not item or name not in item or "S" not in item[name]:
        return None
    return str(item[name]["S"])


class _Retry(Exception):
    """One attempt failed in a way worth another attempt (``unknown``: it may have been applied;
    ``replaced``: the next attempt goes to other shards, so it need not wait for this one's)."""

    def __init__(self, unknown: bool, what: str, replaced: bool = False) -> None:
        super().__init__(what)
        self.unknown = unknown
        self.replaced = replaced


def _classify_failure(error: Exception) -> _Retry | None:
    """Retryable failures of one call; None for a verdict (re-raised by the caller)."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(error, BotoCoreError):  # timeouts, connection errors: the request may have landed
        return _Retry(True, type(error).__name__)
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        if code in _RETRYABLE_ERRORS:
            return _Retry(False, code)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _UNKNOWN_OUTCOME_ERRORS or status >= 500:
            return _Retry(True, code)
    return None


class DynamoQuotaLedger:
    """The quota ledger on DynamoDB (low-level boto3 client; build it with ``aws.quota_client()``
    so botocore makes one attempt per call and the budgets here are the whole story).

    Calls per request: reserve = 1 ``TransactWriteItems`` (+ 1 strongly consistent
    ``BatchGetItem`` of the reserved window items when ``snapshot_after_reserve`` is on, only so
    the success path can report remaining quota); a rejection = 1 call (the short window's ``used``
    comes back through ``ReturnValuesOnConditionCheckFailure=ALL_OLD``); settle = 1
    ``TransactWriteItems`` (or 1 ``UpdateItem`` when every delta is 0). Retries (contention,
    throttling, timeouts, 5xx) are idempotent, jittered and bounded in attempts and in time.
    """

    blocking: ClassVar[bool] = True  # boto3 waits for DynamoDB

    def __init__(
        self,
        client: Any,
        table_name: str | None = None,
        *,
        snapshot_after_reserve: bool = True,
        max_attempts: int | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        reserve_seconds: float | None = None,
        settle_seconds: float | None = None,
        attempt_seconds: float | None = None,
    ) -> None:
        # Unset budgets follow QG_QUOTA_TIME_SCALE, like the quota client's timeouts (aws.quota_client).
        scale = settings.quota_time_scale()
        self._client = client
        self.table_name = table_name or tables.QUOTA.name()
        self.snapshot_after_reserve = snapshot_after_reserve
        self.reserve_attempts = max(1, max_attempts or DEFAULT_RESERVE_ATTEMPTS)
        self.settle_attempts = max(1, max_attempts or DEFAULT_SETTLE_ATTEMPTS)
        self.reserve_seconds = reserve_seconds if reserve_seconds is not None else DEFAULT_RESERVE_SECONDS * scale
        self.settle_seconds = settle_seconds if settle_seconds is not None else DEFAULT_SETTLE_SECONDS * scale
        self.attempt_seconds = attempt_seconds if attempt_seconds is not None else DEFAULT_ATTEMPT_SECONDS * scale
        self._clock = clock
        self._sleep = sleep

    def _attempts(self, attempt: Callable[[], Any], max_attempts: int, budget: float, what: str) -> Any:
        """Run ``attempt`` until it returns or raises a verdict, within ``max_attempts`` and
        ``budget`` seconds (an attempt starts only if it can end inside the budget; no sleep
        after the last one). Raises LedgerBusy / LedgerUnavailable when the retries run out."""
        started = self._clock()
        unknown = False
        last = ""
        number = 0  # attempts that count against max_attempts (and set the backoff)
        # An attempt re-placed on other shards after a conflict does not wait for the conflicting
        # transaction, nor count as a failure; it is bounded by the budget and this many in all.
        for _ in range(REPLACED_ATTEMPTS_FACTOR * max_attempts):
            replaced = False
            try:
                return attempt()
            except _Retry as own:
                unknown = unknown or own.unknown
                replaced = own.replaced
                last = str(own)
            except Exception as error:
                failure = _classify_failure(error)
                if failure is None:
                    raise
                unknown = unknown or failure.unknown
                last = str(failure)
            if not replaced:
                number += 1
                if number >= max_attempts:
                    break
            delay = random.uniform(0, REPLACED_DELAY_SECONDS) if replaced else self._backoff_delay(number - 1)
            if self._clock() + delay + self.attempt_seconds - started > budget:
                break
            self._sleep(delay)
        error_type = LedgerUnavailable if unknown else LedgerBusy
        raise error_type(f"quota store unavailable ({last}); {what}")

    # ---- reserve ---------------------------------------------------------------------------------

    def reserve(
        self, request_id: str, charges: Sequence[WindowCharge], record: Mapping[str, Any] | None = None
    ) -> list[WindowUsage]:
        charges = check_charges(charges)
        impossible = _impossible(charges)
        if impossible:
            raise impossible
        placement = Placement(
            [(c, c.amount) for c in charges if c.unit != WindowUnit.CONCURRENT], self._read_shards, guarded=True
        )
        self._raise_if_short(placement)
        slots = SlotChoice([c for c in charges if c.unit == WindowUnit.CONCURRENT])
        # Each attempt's token marks the reservation item as made by this call (a lost answer is
        # recognised by it) and is that attempt's idempotency token; an attempt after a conflict
        # may place a sharded window elsewhere, so it is a new request with a new token.
        tokens: list[str] = []
        record_attribute = to_attribute(record) if record is not None else None
        sent: dict[str, Any] = {"version": None, "actions": []}

        def attempt() -> list[WindowUsage]:
            version = (placement.version, slots.version)
            if sent["version"] != version:  # else: the very same request, same token
                tokens.append(uuid.uuid4().hex)
                now = int(self._clock())
                sent["actions"] = self._reserve_actions(request_id, charges, placement, slots, tokens[-1], now)
                sent["version"] = version
                if record_attribute is not None:
                    # The usage record rides on the reservation's own write: no extra call.
                    sent["actions"][-1]["Put"]["Item"][RECORD_ATTRIBUTE] = record_attribute
            return self._reserve_once(request_id, charges, placement, slots, sent["actions"], tokens)

        return self._attempts(
            attempt, self.reserve_attempts, self.reserve_seconds, f"reservation {request_id} not made"
        )

    @staticmethod
    def _raise_if_short(placement: Placement) -> None:
        if not placement.short:
            return
        short = list(placement.short.values())
        observed = [placement.short.get(i) or WindowUsage(c, None) for i, (c, _) in enumerate(placement.items)]
        raise QuotaExceeded(short[0].charge, short[0].used, short, observed)

    def _read_shards(self, charge: WindowCharge) -> list[int]:
        """``used`` of every shard of a sharded window (strongly consistent; 0 when absent)."""
        keys = [{"pk": _s(shard_pk(charge, i)), "sk": _s(charge.sk)} for i in range(shard_count(charge))]
        found: dict[str | None, int] = {}
        for start in range(0, len(keys), 100):  # BatchGetItem takes 100 keys
            pending: dict[str, Any] = {
                self.table_name: {
                    "Keys": keys[start : start + 100],
                    "ConsistentRead": True,
                    "ProjectionExpression": "pk, #u",
                    "ExpressionAttributeNames": {"#u": "used"},
                }
            }
            for _ in range(3):  # unprocessed keys are asked again, a bounded number of times
                response = self._client.batch_get_item(RequestItems=pending)
                for item in response.get("Responses", {}).get(self.table_name, []):
                    found[_str_attr(item, "pk")] = _int_attr(item, "used") or 0
                pending = response.get("UnprocessedKeys") or {}
                if not pending:
                    break
            if pending:
                raise _Retry(False, "shards not read")
        return [found.get(shard_pk(charge, i), 0) for i in range(shard_count(charge))]

    def _reserve_actions(
        self,
        request_id: str,
        charges: list[WindowCharge],
        placement: Placement,
        slots: SlotChoice,
        token: str,
        now: int,
    ) -> list[dict[str, Any]]:
        actions: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": {"pk": _s(shard_pk(c, shard)), "sk": _s(c.sk)},
                    "UpdateExpression": "ADD #u :n SET #l = :limit, #e = :exp",
                    "ConditionExpression": "attribute_not_exists(#u) OR #u <= :max",
                    "ExpressionAttributeNames": {"#u": "used", "#l": "limit", "#e": "expires_at"},
                    "ExpressionAttributeValues": {
                        ":n": _n(units),
                        ":limit": _n(c.limit),
                        ":exp": _n(c.expires_at),
                        ":max": _n(Placement.guard(c, shard, units)),
                    },
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
            for _, c, shard, units in placement.actions()
        ]
        actions += [
            lease_action(self.table_name, c, slot, request_id, now)
            for c, slot in zip(slots.charges, slots.slots, strict=True)
        ]
        leased = {c.item_key: slot for c, slot in zip(slots.charges, slots.slots, strict=True)}
        recorded = [replace(c, slot=leased[c.item_key]) if c.item_key in leased else c for c in charges]
        actions.append(
            {
                "Put": {
                    "TableName": self.table_name,
                    "Item": {
                        "pk": _s(f"req#{request_id}"),
                        "sk": _s(RESERVATION_SK),
                        "status": _s(ReservationStatus.RESERVED),
                        "token": _s(token),
                        "charges": {"L": [_charge_to_attr(c) for c in recorded]},
                        "created_at": _n(now),
                        "expires_at": _n(now + RESERVATION_RETENTION_SECONDS),
                        # The sparse index of open reservations (removed by settle and by the reaper).
                        tables.RESERVED_INDEX.partition_key: _s(reserved_shard(request_id)),
                        str(tables.RESERVED_INDEX.sort_key): _n(now),
                    },
                    "ConditionExpression": "attribute_not_exists(pk)",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        )
        return actions

    def _reserve_once(
        self,
        request_id: str,
        charges: list[WindowCharge],
        placement: Placement,
        slots: SlotChoice,
        actions: list[dict[str, Any]],
        tokens: list[str],
    ) -> list[WindowUsage]:
        from botocore.exceptions import ClientError

        parts = placement.actions()
        leased = {c.item_key: slot for c, slot in zip(slots.charges, slots.slots, strict=True)}
        charges = [replace(c, slot=leased[c.item_key]) if c.item_key in leased else c for c in charges]
        try:
            self._client.transact_write_items(TransactItems=actions, ClientRequestToken=tokens[-1])
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code != "TransactionCanceledException":
                raise
            reasons = error.response.get("CancellationReasons") or []
            if len(reasons) != len(actions):
                raise
            reservation_reason = reasons[-1]
            if reservation_reason.get("Code") == "ConditionalCheckFailed":
                existing = reservation_reason.get("Item")
                if _str_attr(existing, "token") in tokens:
                    # An earlier attempt of this very call committed (its response was lost).
                    return self._usages_after(charges)
                raise ReservationExists(request_id) from error
            slots_moved = self._after_slot_cancellation(slots, reasons[len(parts) : -1], error)
            self._after_cancellation(placement, parts, reasons[: len(parts)], error)
            if slots_moved:
                raise _Retry(False, "concurrency slot taken", replaced=True) from None
            raise
        return self._usages_after(charges)

    def _after_slot_cancellation(
        self, slots: SlotChoice, reasons: Sequence[Mapping[str, Any]], error: Exception
    ) -> bool:
        """Move each refused slot lease elsewhere (True if any moved); raises QuotaExceeded when
        every slot of a concurrency limit is held by a live lease."""
        moved = False
        for index, reason in enumerate(reasons):
            code = reason.get("Code")
            if code == "ConditionalCheckFailed" and slots.exhausted(index):
                charge = slots.charges[index]
                leases = self._read_leases(charge)
                now = self._clock()
                taken = slots_taken(leases, now)
                if taken is not None:
                    usage = WindowUsage(charge, taken.held)
                    raise QuotaExceeded(charge, taken.held, [usage], [usage], frees_at=taken.frees_at) from error
                free = [slot for slot, until in enumerate(leases) if until is None or until < now]
                slots.place(index, random.choice(free))
                moved = True
            elif code == "ConditionalCheckFailed" or code in _RETRYABLE_REASONS:
                slots.repick(index)
                moved = True
        return moved

    def _read_leases(self, charge: WindowCharge) -> list[int | None]:
        """``lease_until`` of every slot of a concurrency limit (None: free), strongly consistent."""
        keys = [{"pk": _s(charge.pk), "sk": _s(slot_sk(slot))} for slot in range(charge.limit)]
        found: dict[str | None, int | None] = {}
        for start in range(0, len(keys), 100):  # BatchGetItem takes 100 keys
            pending: dict[str, Any] = {
                self.table_name: {
                    "Keys": keys[start : start + 100],
                    "ConsistentRead": True,
                    "ProjectionExpression": "sk, #until",
                    "ExpressionAttributeNames": {"#until": "lease_until"},
                }
            }
            for _ in range(3):  # unprocessed keys are asked again, a bounded number of times
                response = self._client.batch_get_item(RequestItems=pending)
                for item in response.get("Responses", {}).get(self.table_name, []):
                    found[_str_attr(item, "sk")] = _int_attr(item, "lease_until")
                pending = response.get("UnprocessedKeys") or {}
                if not pending:
                    break
            if pending:
                raise _Retry(False, "concurrency slots not read")
        return [found.get(slot_sk(slot)) for slot in range(charge.limit)]

    def _after_cancellation(
        self,
        placement: Placement,
        parts: list[tuple[int, WindowCharge, int, int]],
        reasons: Sequence[Mapping[str, Any]],
        error: Exception,
    ) -> None:
        """Raise what a cancelled reservation (or top-up) means: QuotaExceeded when a window is
        really short, _Retry (re-placed when the trouble was a sharded window) on contention."""
        short: dict[int, WindowUsage] = {}
        passed: set[int] = set(range(len(placement.items)))
        to_rebalance: set[int] = set()
        to_repick: set[int] = set()
        contended = ""
        for (index, charge, _, _), reason in zip(parts, reasons, strict=True):
            code = reason.get("Code")
            if code not in (None, "None"):
                passed.discard(index)
            if code == "ConditionalCheckFailed":
                if placement.sharded(index):
                    to_rebalance.add(index)
                else:
                    short[index] = WindowUsage(charge, _int_attr(reason.get("Item"), "used"))
            elif code in _RETRYABLE_REASONS:
                contended = contended or str(code)
                if placement.sharded(index):
                    to_repick.add(index)
        if short:
            observed = [
                short.get(i) or (_passed(c) if i in passed else WindowUsage(c, None))
                for i, (c, _) in enumerate(placement.items)
            ]
            first = next(iter(short.values()))
            raise QuotaExceeded(first.charge, first.used, list(short.values()), observed) from error
        for index in to_rebalance:
            placement.rebalance(index)
        self._raise_if_short(placement)
        for index in to_repick - to_rebalance:
            placement.repick(index)
        if to_rebalance or to_repick:
            raise _Retry(False, contended or "shard short", replaced=True) from None
        if contended:
            raise _Retry(False, contended) from None

    def _usages_after(self, charges: list[WindowCharge]) -> list[WindowUsage]:
        if not self.snapshot_after_reserve or not charges:
            return [WindowUsage(c, None) for c in charges]
        return [WindowUsage(c, used) for c, used in zip(charges, self.read_used(charges), strict=True)]

    def read_used(self, charges: Sequence[WindowCharge]) -> list[int | None]:
        """Best effort: one strongly consistent BatchGetItem; a failure only loses header values."""
        from botocore.exceptions import BotoCoreError, ClientError

        # A sharded window's ``used`` is the sum over its shards: not read for a header.
        single = [c for c in charges if shard_count(c) == 1]
        if not single:
            return [None] * len(charges)
        try:
            response = self._client.batch_get_item(
                RequestItems={
                    self.table_name: {
                        "Keys": [{"pk": _s(c.pk), "sk": _s(c.sk)} for c in single],
                        "ConsistentRead": True,
                        "ProjectionExpression": "pk, sk, #u",
                        "ExpressionAttributeNames": {"#u": "used"},
                    }
                }
            )
        except (ClientError, BotoCoreError):
            return [None] * len(charges)
        found = {
            (_str_attr(item, "pk"), _str_attr(item, "sk")): _int_attr(item, "used")
            for item in response.get("Responses", {}).get(self.table_name, [])
        }
        return [found.get(c.item_key) if shard_count(c) == 1 else None for c in charges]

    # ---- settle ----------------------------------------------------------------------------------

    def settle(
        self,
        request_id: str,
        adjustments: Sequence[tuple[WindowCharge, int]],
        usage: Mapping[str, int] | None = None,
        record: Mapping[str, Any] | None = None,
        compensating: bool = False,
    ) -> bool:
        adjustments = _check_adjustments(adjustments)
        # A refund (or an overrun) may land in any shard of a sharded window: the sum is what counts,
        # and each shard stays within its share. A conflicting attempt goes to another shard.
        leased = [c for c, _ in adjustments if c.unit == WindowUnit.CONCURRENT and c.slot is not None]
        placement = Placement(
            [(c, d) for c, d in adjustments if d != 0 and c not in leased], self._read_shards, guarded=False
        )
        # A slot whose lease was lost (it expired and another request took it) is not released.
        releases = Releases(leased)
        tokens: list[str] = []
        now = int(self._clock())
        record_attribute = to_attribute(record) if record is not None else None

        sent: dict[str, Any] = {"version": None, "request": {}}

        def attempt() -> bool:
            version = (placement.version, len(releases.charges))
            if sent["version"] != version:  # else: the very same request, same token
                tokens.append(uuid.uuid4().hex)
                request = self._settle_request(
                    request_id, adjustments, placement, releases, usage or {}, tokens[-1], now
                )
                sent["request"], sent["version"] = request, version
                if record_attribute is not None:
                    # The completed usage record, in the same write that flips the status (the outbox).
                    update = request["update"] if "update" in request else request["transaction"][0]["Update"]
                    update["UpdateExpression"] = update["UpdateExpression"].replace("SET ", "SET #rec = :rec, ", 1)
                    update["ExpressionAttributeNames"]["#rec"] = RECORD_ATTRIBUTE
                    update["ExpressionAttributeValues"][":rec"] = record_attribute
            return self._settle_once(sent["request"], placement, releases, tokens, request_id if compensating else None)

        return bool(
            self._attempts(attempt, self.settle_attempts, self.settle_seconds, f"reservation {request_id} not settled")
        )

    def _settle_request(
        self,
        request_id: str,
        adjustments: list[tuple[WindowCharge, int]],
        placement: Placement,
        releases: Releases,
        usage: Mapping[str, int],
        token: str,
        now: int,
    ) -> dict[str, Any]:
        """The one write of an attempt of a settlement (its token is the idempotency token)."""
        reservation_update: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": {"pk": _s(f"req#{request_id}"), "sk": _s(RESERVATION_SK)},
            "UpdateExpression": (
                "SET #st = :settled, #at = :now, #tok = :tok, #adj = :adj, #usage = :usage, #exp = :expires"
                " REMOVE #shard, #open_since"
            ),
            "ConditionExpression": "#st = :reserved",
            "ExpressionAttributeNames": {
                "#shard": tables.RESERVED_INDEX.partition_key,
                "#open_since": str(tables.RESERVED_INDEX.sort_key),
                "#st": "status",
                "#at": "settled_at",
                "#tok": "settle_token",
                "#adj": "adjustments",
                "#usage": "usage",
                "#exp": "expires_at",
            },
            "ExpressionAttributeValues": {
                ":settled": _s(ReservationStatus.SETTLED),
                ":expires": _n(now + SETTLED_RETENTION_SECONDS),
                ":reserved": _s(ReservationStatus.RESERVED),
                ":now": _n(now),
                ":tok": _s(token),
                ":adj": {"L": [_adjustment_to_attr(c, d) for c, d in adjustments]},
                ":usage": {"M": {str(k): _n(v) for k, v in usage.items()}},
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        window_updates = [
            {
                "Update": {
                    "TableName": self.table_name,
                    # The reserved window, even if the clock has moved on to a later window.
                    "Key": {"pk": _s(shard_pk(c, shard)), "sk": _s(c.sk)},
                    "UpdateExpression": "ADD #u :d SET #e = if_not_exists(#e, :exp)",
                    "ExpressionAttributeNames": {"#u": "used", "#e": "expires_at"},
                    "ExpressionAttributeValues": {":d": _n(delta), ":exp": _n(c.expires_at)},
                }
            }
            for _, c, shard, delta in placement.actions()
        ]
        window_updates += [
            release_action(self.table_name, c, c.slot, request_id) for c in releases.charges if c.slot is not None
        ]
        if not window_updates:
            return {"update": reservation_update}
        return {"transaction": [{"Update": reservation_update}, *window_updates]}

    def _settle_once(
        self,
        request: dict[str, Any],
        placement: Placement,
        releases: Releases,
        tokens: list[str],
        tombstone_for: str | None = None,
    ) -> bool:
        """One attempt. ``tombstone_for``: a compensation's request id; if its reservation item does
        not exist (yet), leave a tombstone instead, so that the reservation can never land after."""
        from botocore.exceptions import ClientError

        try:
            if "transaction" in request:
                self._client.transact_write_items(TransactItems=request["transaction"], ClientRequestToken=tokens[-1])
            else:
                self._client.update_item(**request["update"])
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code == "ConditionalCheckFailedException":
                existing: Any = error.response.get("Item")
            elif code == "TransactionCanceledException" and error.response.get("CancellationReasons"):
                reasons = error.response["CancellationReasons"]
                if reasons[0].get("Code") != "ConditionalCheckFailed":
                    windows = len(placement.actions())
                    releases.drop_lost(reasons[1 + windows :])
                    self._settle_contended(placement, reasons[: 1 + windows], error, releases.dropped)
                existing = reasons[0].get("Item")
            else:
                raise
            if existing is None and tombstone_for is not None:
                return self._tombstone(tombstone_for, tokens[-1])
            # Already closed: True only if an earlier attempt of this very call settled it.
            return _str_attr(existing, "settle_token") in tokens and _str_attr(existing, "status") != str(
                ReservationStatus.CANCELLED
            )
        return True

    @staticmethod
    def _settle_contended(
        placement: Placement, reasons: Sequence[Mapping[str, Any]], error: Exception, released_lost: bool = False
    ) -> None:
        """``reasons``: the reservation item's, then one per window part."""
        codes = [r.get("Code") for r in reasons]
        retryable = [code for code in codes if code in _RETRYABLE_REASONS]
        if not retryable and released_lost:
            raise _Retry(False, "concurrency lease already lost", replaced=True) from None
        if not retryable:
            raise error
        moved = False
        for (index, _, _, _), code in zip(placement.actions(), codes[1:], strict=True):
            if code in _RETRYABLE_REASONS and placement.sharded(index):
                placement.repick(index)
                moved = True
        raise _Retry(False, str(retryable[0]), replaced=moved) from None

    def _tombstone(self, request_id: str, token: str) -> bool:
        """Mark a reservation that does not exist as ``cancelled`` (False: nothing was charged).
        If the reservation landed meanwhile, the attempt is repeated (it is settled normally)."""
        from botocore.exceptions import ClientError

        now = int(self._clock())
        try:
            # An UpdateItem that creates the item: the settlements consumer may only UpdateItem.
            self._client.update_item(
                TableName=self.table_name,
                Key={"pk": _s(f"req#{request_id}"), "sk": _s(RESERVATION_SK)},
                UpdateExpression="SET #st = :cancelled, #tok = :tok, #at = :now, #exp = :expires",
                ConditionExpression="attribute_not_exists(pk) OR #tok = :tok",
                ExpressionAttributeNames={
                    "#st": "status",
                    "#tok": "settle_token",
                    "#at": "settled_at",
                    "#exp": "expires_at",
                },
                ExpressionAttributeValues={
                    ":cancelled": _s(ReservationStatus.CANCELLED),
                    ":tok": _s(token),
                    ":now": _n(now),
                    # Outlives any attempt of the reservation (a client token lasts 10 minutes).
                    ":expires": _n(now + SETTLED_RETENTION_SECONDS),
                },
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code", "") == "ConditionalCheckFailedException":
                raise _Retry(False, "the reservation landed before its tombstone") from None
            raise
        return False

    # ---- concurrency leases --------------------------------------------------------------------

    def renew_leases(self, request_id: str, charges: Sequence[WindowCharge]) -> bool:
        """Extend the request's slot leases (one ``UpdateItem`` each, guarded by ``holder``). False
        when one is lost or the store did not answer (best effort: the next renewal tries again)."""
        from botocore.exceptions import BotoCoreError, ClientError

        renewed = True
        now = int(self._clock())
        for charge in charges:
            if charge.unit != WindowUnit.CONCURRENT or charge.slot is None:
                continue
            try:
                self._client.update_item(**renew_request(self.table_name, charge, charge.slot, request_id, now))
            except (ClientError, BotoCoreError):
                renewed = False
        return renewed

    # ---- refused requests --------------------------------------------------------------------------

    def count_requests(self, charges: Sequence[WindowCharge]) -> None:
        """One unconditional ``UpdateItem`` ADD per window, on one shard drawn like a reservation's
        (a later reservation's guard, or its read of every shard, sees it). Retried only when the
        first attempt surely did not land (an ADD is not idempotent). Raises LedgerBusy on failure."""
        for charge in check_counted(charges):
            shard = random_shard(charge, _COUNT_RNG)
            update = {
                "TableName": self.table_name,
                "Key": {"pk": _s(shard_pk(charge, shard)), "sk": _s(charge.sk)},
                "UpdateExpression": "ADD #u :n SET #l = :limit, #e = :exp",
                "ExpressionAttributeNames": {"#u": "used", "#l": "limit", "#e": "expires_at"},
                "ExpressionAttributeValues": {
                    ":n": _n(charge.amount),
                    ":limit": _n(charge.limit),
                    ":exp": _n(charge.expires_at),
                },
            }
            for attempt in range(COUNT_ATTEMPTS):
                try:
                    self._client.update_item(**update)
                    break
                except Exception as error:
                    failure = _classify_failure(error)
                    if failure is None or failure.unknown or attempt + 1 == COUNT_ATTEMPTS:
                        raise LedgerBusy(f"refused request not counted: {type(error).__name__}") from None
                    self._sleep(self._backoff_delay(attempt))

    # ---- top up --------------------------------------------------------------------------------

    def top_up(self, request_id: str, increases: Sequence[tuple[WindowCharge, int]]) -> bool:
        increases = check_top_up(increases)
        if not increases:
            return True
        placement = Placement(increases, self._read_shards, guarded=True)
        if placement.short:
            return False
        totals = top_up_totals(increases)
        names = {"#st": "status"}
        values: dict[str, Any] = {":reserved": _s(ReservationStatus.RESERVED)}
        adds = []
        for i, (unit, n) in enumerate(sorted(totals.items())):
            names[f"#t{i}"] = f"topped_up_{unit}"
            values[f":t{i}"] = _n(n)
            adds.append(f"#t{i} :t{i}")
        reservation_update = {
            "Update": {
                "TableName": self.table_name,
                "Key": {"pk": _s(f"req#{request_id}"), "sk": _s(RESERVATION_SK)},
                "UpdateExpression": "ADD " + ", ".join(adds),
                "ConditionExpression": "#st = :reserved",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }

        def attempt() -> bool:
            actions: list[dict[str, Any]] = [
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": {"pk": _s(shard_pk(c, shard)), "sk": _s(c.sk)},
                        "UpdateExpression": "ADD #u :n",
                        "ConditionExpression": "attribute_not_exists(#u) OR #u <= :max",
                        "ExpressionAttributeNames": {"#u": "used"},
                        "ExpressionAttributeValues": {":n": _n(n), ":max": _n(Placement.guard(c, shard, n))},
                    }
                }
                for _, c, shard, n in placement.actions()
            ]
            return self._top_up_once(placement, [*actions, reservation_update])

        return bool(
            self._attempts(
                attempt, self.reserve_attempts, self.reserve_seconds, f"top-up of reservation {request_id} not made"
            )
        )

    def _top_up_once(self, placement: Placement, actions: list[dict[str, Any]]) -> bool:
        from botocore.exceptions import ClientError

        parts = placement.actions()
        try:
            self._client.transact_write_items(TransactItems=actions, ClientRequestToken=uuid.uuid4().hex)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            reasons = error.response.get("CancellationReasons") or []
            if code != "TransactionCanceledException" or len(reasons) != len(actions):
                raise
            if reasons[-1].get("Code") == "ConditionalCheckFailed":
                return False  # the reservation is no longer open
            try:
                self._after_cancellation(placement, parts, reasons[:-1], error)
            except QuotaExceeded:
                return False  # a window has no room
            raise
        return True

    # ---- reads -----------------------------------------------------------------------------------

    @staticmethod
    def _backoff_delay(attempt: int) -> float:
        return random.uniform(0, min(0.25, 0.02 * 2**attempt))


class Releases:
    """The slot leases a settlement gives back; one found lost (``holder`` is another request) is
    dropped from the next attempt."""

    def __init__(self, charges: list[WindowCharge]) -> None:
        self.charges = list(charges)
        self.dropped = False

    def drop_lost(self, reasons: Sequence[Mapping[str, Any]]) -> None:
        lost = {i for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"}
        self.dropped = bool(lost)
        self.charges = [c for i, c in enumerate(self.charges) if i not in lost]


def _charge_to_attr(charge: WindowCharge) -> dict[str, Any]:
    return {
        "M": {
            "pk": _s(charge.pk),
            "sk": _s(charge.sk),
            "amount": _n(charge.amount),
            "limit": _n(charge.limit),
            "window_end": _n(charge.window_end),
            **({"slot": _n(charge.slot)} if charge.slot is not None else {}),
        }
    }


def _adjustment_to_attr(charge: WindowCharge, delta: int) -> dict[str, Any]:
    return {"M": {"pk": _s(charge.pk), "sk": _s(charge.sk), "delta": _n(delta)}}
