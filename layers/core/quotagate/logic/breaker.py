"""Circuit breaker per upstream target, shared by every proxy container through a CircuitStore,
decided across callers: one tenant cannot take a target down for the others.

A provider's 5xx caused by one client's content (a schema it cannot compile, an odd prompt) looks
exactly like an outage, so no single request can say whether the target is at fault. Each failure
is therefore counted twice: on the target's **shared** circuit, with the tenant that saw it, and on
the **caller's own** circuit for that target (item ``<target>#caller#<tenant digest>``).

Policy (``circuit_breaker`` in the configuration, :class:`quotagate.config.BreakerPolicy`):

- **closed**: requests go through. Each failure of the target (connection error, timeout, 429,
  5xx, a stream that breaks) adds one to the consecutive failures of both circuits; a success
  resets them. The caller's own circuit opens when its count reaches ``failure_threshold``: that
  tenant alone skips the target. The shared circuit opens when its count reaches
  ``failure_threshold`` *and* those failures came from at least ``tenant_threshold`` distinct
  tenants (one conditional write: exactly one container opens it).
- **open**: the router skips the target for ``cooldown_seconds`` (every tenant for the shared
  circuit, the one tenant for its own).
- **half-open** (cool-down over): exactly one request may probe the target. The probe takes a
  lease with a conditional write, so only one container, and one request in it, probes; the
  lease expires after ``probe_lease_seconds`` if its holder never reports back (crashed). A
  successful probe **closes** the circuit, a failed one **opens** it again for a new cool-down.
  Every other request skips the target meanwhile. A tenant whose own circuit counts failures
  never probes the shared circuit: a probe from a caller that is itself failing proves nothing.

"Consecutive" is counted across containers on the shared items. A success only writes when this
container's copy shows something to reset (failures > 0, open or half-open), so a healthy
target costs no write per request. Each container trusts its copy of a circuit for
``cache_seconds`` (default 2 s): one container's discovery protects the others within that
time, without a read per request. Any success closes the circuit, the probe's or that of a request
that was already in flight when it opened (the target evidently answers). Storage errors fail
open (a target is treated as closed): the breaker must never be the reason traffic stops.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quotagate.config import BreakerPolicy
from quotagate.dal.circuit_store import CircuitRecord, CircuitState, CircuitStore

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

logger = logging.getLogger("quotagate.breaker")

CALLER_SEPARATOR = "#caller#"


@functools.lru_cache(maxsize=4096)  # asked twice per request (admission and failover)
def caller_of(tenant: str) -> str:
    """The caller's name in circuit items: a digest, so no tenant value can spell another item's key."""
    return hashlib.sha256(tenant.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def caller_circuit(target: str, caller: str) -> str:
    """The item of ``caller``'s own circuit for ``target``."""
    return f"{target}{CALLER_SEPARATOR}{caller}"


@dataclass(frozen=True)
class Permit:
    """Leave to call a target; ``probe`` when this call is the shared circuit's half-open probe,
    ``caller_probe`` when it probes the caller's own circuit."""

    target: str
    probe: bool = False
    caller: str | None = None  # caller_of(tenant)
    caller_probe: bool = False


@dataclass(frozen=True)
class CircuitView:
    state: CircuitState
    open_until: float = 0.0


def _combined(shared: CircuitRecord, own: CircuitRecord | None, now: float) -> CircuitView:
    """The target as one caller sees it: open if either circuit is open, or if the shared one is
    half-open and this caller, itself failing, may not probe it."""
    views = [(shared.view(now), shared.open_until)]
    if own is not None:
        views.append((own.view(now), own.open_until))
    opened = [until for state, until in views if state == CircuitState.OPEN]
    if opened:
        return CircuitView(CircuitState.OPEN, max(opened))
    if own is not None and own.failures > 0 and shared.view(now) == CircuitState.HALF_OPEN:
        return CircuitView(CircuitState.OPEN, shared.open_until)
    half_open = [until for state, until in views if state == CircuitState.HALF_OPEN]
    if half_open:
        return CircuitView(CircuitState.HALF_OPEN, max(half_open))
    return CircuitView(CircuitState.CLOSED)


class CircuitBreaker:
    def __init__(
        self,
        store: CircuitStore,
        policy: BreakerPolicy | Callable[[], BreakerPolicy] = BreakerPolicy(),
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        on_open: Callable[[str], None] | None = None,
        on_caller_open: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._on_open = on_open or (lambda target: None)  # a metric: quotagate.observability
        self._on_caller_open = on_caller_open or (lambda target: None)  # one tenant's circuit: a metric
        self._policy = policy if callable(policy) else (lambda: policy)
        self._clock = clock
        self.owner = owner or uuid.uuid4().hex
        self._cache: dict[str, tuple[float, CircuitRecord]] = {}  # item key -> (read at, record)
        self._lock = threading.Lock()

    @property
    def policy(self) -> BreakerPolicy:
        return self._policy()

    def now(self) -> float:
        return self._clock()

    # -- reading ---------------------------------------------------------------------------------
    def _records(self, keys: Sequence[str]) -> dict[str, CircuitRecord]:
        now = self._clock()
        ttl = self.policy.cache_seconds
        with self._lock:
            fresh = {k: entry[1] for k in keys if (entry := self._cache.get(k)) and now - entry[0] < ttl}
        stale = [k for k in dict.fromkeys(keys) if k not in fresh]
        if stale:
            try:
                found = self._store.get_many(stale)
            except Exception as error:  # fail open, and do not hammer a failing store
                logger.warning("circuit state unavailable, treating as closed: %s", type(error).__name__)
                found = {}
            with self._lock:
                for key in stale:
                    record = found.get(key, CircuitRecord(key))
                    self._cache[key] = (now, record)
                    fresh[key] = record
        return fresh

    @staticmethod
    def _keys(targets: Sequence[str], caller: str | None) -> list[str]:
        own = [caller_circuit(t, caller) for t in targets] if caller is not None else []
        return [*targets, *own]

    def views(self, targets: Sequence[str], caller: str | None = None) -> dict[str, CircuitView]:
        """The state of each target for ``caller`` as this container knows it (refreshed when older
        than ``cache_seconds``; one batched read for all stale items)."""
        now = self._clock()
        records = self._records(self._keys(targets, caller))
        return {
            t: _combined(records[t], records[caller_circuit(t, caller)] if caller is not None else None, now)
            for t in targets
        }

    def _fresh(self, key: str) -> CircuitRecord | None:
        entry = self._cache.get(key)
        if entry is not None and self._clock() - entry[0] < self.policy.cache_seconds:
            return entry[1]
        return None

    def cached_views(self, targets: Sequence[str], caller: str | None = None) -> dict[str, CircuitView] | None:
        """``views`` when every item's copy is fresh (no I/O: callable on the event loop), else None."""
        now = self._clock()
        views = {}
        for target in targets:
            shared = self._fresh(target)
            own = self._fresh(caller_circuit(target, caller)) if caller is not None else None
            if shared is None or (caller is not None and own is None):
                return None
            views[target] = _combined(shared, own, now)
        return views

    def allow_cached(self, target: str, caller: str | None = None) -> Permit | None:
        """A Permit when this container's fresh copies say closed (no I/O); None means: ask ``allow``."""
        shared = self._fresh(target)
        own = self._fresh(caller_circuit(target, caller)) if caller is not None else None
        if shared is None or (caller is not None and own is None):
            return None
        if _combined(shared, own, self._clock()).state == CircuitState.CLOSED:
            return Permit(target, caller=caller)
        return None

    def success_needs_write(self, permit: Permit) -> bool:
        """Whether ``record_success`` would write (else it can be skipped, with no I/O)."""
        if permit.probe or permit.caller_probe:
            return True
        keys = [permit.target] + ([caller_circuit(permit.target, permit.caller)] if permit.caller else [])
        return any(self._to_reset(key) for key in keys)

    def _to_reset(self, key: str) -> bool:
        entry = self._cache.get(key)
        record = entry[1] if entry else None
        return record is not None and (record.failures > 0 or record.state != CircuitState.CLOSED)

    def _remember(self, record: CircuitRecord | None) -> None:
        if record is not None:
            with self._lock:
                self._cache[record.target] = (self._clock(), record)

    # -- deciding --------------------------------------------------------------------------------
    def allow(self, target: str, caller: str | None = None) -> Permit | None:
        """Right before ``caller`` calls ``target``: a Permit, or None to skip it (open for everyone
        or for this caller, or half-open with the probe taken by someone else or not this caller's
        to take)."""
        own_key = caller_circuit(target, caller) if caller is not None else None
        records = self._records([target] + ([own_key] if own_key else []))
        shared, own = records[target], records[own_key] if own_key else None
        now = self._clock()
        if _combined(shared, own, now).state == CircuitState.OPEN:
            return None
        own_half_open = own is not None and own.view(now) == CircuitState.HALF_OPEN
        shared_half_open = shared.view(now) == CircuitState.HALF_OPEN
        if (own_half_open and own is not None and not own.probe_free(now)) or (
            shared_half_open and not shared.probe_free(now)
        ):
            return None
        caller_probe = False
        if own_half_open and own_key is not None:
            taken = self._take_probe(own_key, now)
            if taken is False:
                return None
            caller_probe = bool(taken)
        probe = False
        if shared_half_open:
            taken = self._take_probe(target, now)
            if taken is False:
                return None
            probe = bool(taken)
        return Permit(target, probe=probe, caller=caller, caller_probe=caller_probe)

    def _take_probe(self, key: str, now: float) -> bool | None:
        """True: this request probes ``key``; False: someone else does; None: the store failed
        (the request goes through, not as a probe)."""
        try:
            taken, current = self._store.acquire_probe(key, now, self.policy.probe_lease_seconds, self.owner)
        except Exception as error:
            logger.warning("circuit probe lease unavailable: %s", type(error).__name__)
            return None  # fail open
        self._remember(current)
        if taken:
            logger.info("circuit half-open: probing %s", key)
        return taken

    # -- reporting -------------------------------------------------------------------------------
    def record_success(self, permit: Permit) -> None:
        items = [(permit.target, permit.probe)]
        if permit.caller is not None:
            items.append((caller_circuit(permit.target, permit.caller), permit.caller_probe))
        for key, probed in items:
            if not (probed or self._to_reset(key)):
                continue  # nothing to reset: no write
            with self._lock:
                entry = self._cache.get(key)
            was_open = entry is not None and entry[1].state == CircuitState.OPEN
            try:
                self._remember(self._store.close(key, self._clock()))
                if probed or was_open:
                    logger.info("circuit closed: %s", key)
            except Exception as error:
                logger.warning("could not record a success of %s: %s", key, type(error).__name__)

    def record_failure(self, permit: Permit) -> None:
        policy = self.policy
        now = self._clock()
        target = permit.target
        try:
            if permit.probe:
                record = self._store.reopen(target, now, policy.cooldown_seconds)
                logger.warning("circuit re-opened after a failed probe: %s", target)
                self._on_open(target)
            else:
                record = self._store.add_failure(
                    target,
                    now,
                    policy.failure_threshold,
                    policy.cooldown_seconds,
                    permit.caller,
                    policy.tenant_threshold,
                )
                if self._just_opened(record, now):
                    logger.warning(
                        "circuit opened for every tenant after %d consecutive failures seen by %d tenants: %s",
                        record.failures,
                        len(record.callers),
                        target,
                    )
                    self._on_open(target)
            self._remember(record)
        except Exception as error:
            logger.warning("could not record a failure of %s: %s", target, type(error).__name__)
        if permit.caller is not None:
            self._record_caller_failure(permit, now)

    def _record_caller_failure(self, permit: Permit, now: float) -> None:
        policy = self.policy
        key = caller_circuit(permit.target, permit.caller or "")
        try:
            if permit.caller_probe:
                record = self._store.reopen(key, now, policy.cooldown_seconds)
                opened = True
            else:
                record = self._store.add_failure(key, now, policy.failure_threshold, policy.cooldown_seconds)
                opened = self._just_opened(record, now)
        except Exception as error:
            logger.warning("could not record a failure of %s: %s", key, type(error).__name__)
            return
        if opened:
            # Only this tenant skips the target: its own failures say nothing about the others'.
            logger.warning(
                "circuit opened for one caller only after %d consecutive failures of its own: %s (caller %s)",
                record.failures,
                permit.target,
                permit.caller,
            )
            self._on_caller_open(permit.target)
        self._remember(record)

    def _just_opened(self, record: CircuitRecord, now: float) -> bool:
        return (
            record.state == CircuitState.OPEN and abs(record.open_until - (now + self.policy.cooldown_seconds)) < 0.01
        )


__all__ = ["CircuitBreaker", "CircuitState", "CircuitView", "Permit", "caller_circuit", "caller_of"]
