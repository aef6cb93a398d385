"""Concurrency slots as leases (``max_concurrent_requests``).

A limit of ``L`` requests in flight is ``L`` slot items (``<pk>`` / ``max_concurrent_requests#<i>``).
A reservation leases one slot in its transaction: ``SET holder, lease_until = now + LEASE_SECONDS``
guarded by ``attribute_not_exists(lease_until) OR lease_until < now``; the settlement releases it
(``REMOVE`` guarded by ``holder = request id``); while the request runs, its holder renews the lease
every ``RENEW_SECONDS``. A holder that dies (its execution environment crashed or was killed) stops
renewing: its slot is free again within ``LEASE_SECONDS`` of its last renewal, without the reaper.
A refused request's ``Retry-After`` is the time until the first lease of a holder that stopped
renewing runs out (when a slot really frees); with every holder alive, 1 s (any may end any moment).
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quotagate.quota.windows import CONCURRENCY_LIMIT, RETENTION_SECONDS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from quotagate.quota.windows import WindowCharge

LEASE_SECONDS = 60
RENEW_SECONDS = 20
# A lease not renewed for this long belongs to a holder presumed dead.
STALE_SECONDS = RENEW_SECONDS + 10
# Slots tried at random before every slot is read.
RANDOM_TRIES = 3
_RNG = random.Random()  # spreads requests over slots; not a secret


def slot_sk(slot: int) -> str:
    return f"{CONCURRENCY_LIMIT}#{slot}"


def lease_action(table: str, charge: WindowCharge, slot: int, request_id: str, now: int) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": table,
            "Key": {"pk": {"S": charge.pk}, "sk": {"S": slot_sk(slot)}},
            "UpdateExpression": "SET #h = :rid, #until = :until, #e = :exp",
            "ConditionExpression": "attribute_not_exists(#until) OR #until < :now",
            "ExpressionAttributeNames": {"#h": "holder", "#until": "lease_until", "#e": "expires_at"},
            "ExpressionAttributeValues": {
                ":rid": {"S": request_id},
                ":until": {"N": str(now + LEASE_SECONDS)},
                ":now": {"N": str(now)},
                ":exp": {"N": str(now + LEASE_SECONDS + RETENTION_SECONDS)},
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def release_action(table: str, charge: WindowCharge, slot: int, request_id: str) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": table,
            "Key": {"pk": {"S": charge.pk}, "sk": {"S": slot_sk(slot)}},
            "UpdateExpression": "REMOVE #h, #until",
            "ConditionExpression": "#h = :rid",
            "ExpressionAttributeNames": {"#h": "holder", "#until": "lease_until"},
            "ExpressionAttributeValues": {":rid": {"S": request_id}},
        }
    }


def renew_request(table: str, charge: WindowCharge, slot: int, request_id: str, now: int) -> dict[str, Any]:
    return {
        "TableName": table,
        "Key": {"pk": {"S": charge.pk}, "sk": {"S": slot_sk(slot)}},
        "UpdateExpression": "SET #until = :until, #e = :exp",
        "ConditionExpression": "#h = :rid",
        "ExpressionAttributeNames": {"#h": "holder", "#until": "lease_until", "#e": "expires_at"},
        "ExpressionAttributeValues": {
            ":rid": {"S": request_id},
            ":until": {"N": str(now + LEASE_SECONDS)},
            ":exp": {"N": str(now + LEASE_SECONDS + RETENTION_SECONDS)},
        },
    }


@dataclass(frozen=True)
class SlotsTaken:
    """Every slot was held when read: how many, and when one really frees (None: unknown)."""

    held: int
    frees_at: float | None


def slots_taken(leases: list[int | None], now: float) -> SlotsTaken | None:
    """``leases``: each slot's ``lease_until`` (None: free). None when a slot is free now."""
    live = [until for until in leases if until is not None and until >= now]
    if len(live) < len(leases):
        return None
    stale = [until for until in live if until - LEASE_SECONDS <= now - STALE_SECONDS]
    return SlotsTaken(len(live), float(min(stale)) if stale else None)


def retry_after(taken: SlotsTaken | None, now: float) -> int:
    """Seconds until a slot really frees (a dead holder's lease runs out); 1 while all are alive."""
    if taken is None or taken.frees_at is None:
        return 1
    return max(1, math.ceil(taken.frees_at - now))


class SlotChoice:
    """The slot each concurrency charge of one reservation tries (random; another after a conflict
    or a live lease; ``version`` changes whenever one moves)."""

    def __init__(self, charges: list[WindowCharge], rng: random.Random | None = None) -> None:
        self.charges = charges
        self._rng = rng or _RNG
        self.slots = [self._rng.randrange(max(1, c.limit)) for c in charges]
        self.tried = [{slot} for slot in self.slots]
        self.version = 0

    def repick(self, index: int) -> None:
        limit = max(1, self.charges[index].limit)
        untried = [slot for slot in range(limit) if slot not in self.tried[index]] if limit <= 1024 else []
        slot = self._rng.choice(untried) if untried else self._rng.randrange(limit)
        self.place(index, slot)

    def place(self, index: int, slot: int) -> None:
        self.slots[index] = slot
        self.tried[index].add(slot)
        self.version += 1

    def exhausted(self, index: int) -> bool:
        """Tried enough slots at random: read them all to find a free one (or learn none is)."""
        return len(self.tried[index]) >= min(self.charges[index].limit, RANDOM_TRIES)


class LeaseRenewer:
    """One daemon thread per process that renews the slot leases of the requests in flight every
    ``RENEW_SECONDS`` (started with the first lease; a frozen or dead environment stops renewing,
    which is what frees its slots)."""

    def __init__(self, renew: Callable[[str, Sequence[WindowCharge]], bool], interval: float = RENEW_SECONDS) -> None:
        self._renew = renew
        self._interval = interval
        self._lock = threading.Lock()
        self._held: dict[str, Sequence[WindowCharge]] = {}
        self._thread: threading.Thread | None = None

    def hold(self, request_id: str, charges: Sequence[WindowCharge]) -> None:
        with self._lock:
            self._held[request_id] = charges
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="quota-lease-renewer", daemon=True)
                self._thread.start()

    def release(self, request_id: str) -> None:
        with self._lock:
            self._held.pop(request_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._lock:
                held = list(self._held.items())
            for request_id, charges in held:
                try:
                    self._renew(request_id, charges)
                except Exception:  # noqa: S112 - best effort: the next round tries again
                    continue
