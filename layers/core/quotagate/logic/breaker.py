"""Circuit breaker per upstream target, shared by every proxy container through a CircuitStore.

Policy (``circuit_breaker`` in the configuration, :class:`quotagate.config.BreakerPolicy`):

- **closed**: requests go through. Each failure of the target (connection error, timeout, 429,
  5xx, a stream that breaks) adds one to a shared counter of consecutive failures; a success
  resets it. When the counter reaches ``failure_threshold`` the circuit **opens** (one
  conditional write: exactly one container opens it).
- **open**: the router skips the target for ``cooldown_seconds``.
- **half-open** (cool-down over): exactly one request may probe the target. The probe takes a
  lease with a conditional write, so only one container, and one request in it, probes; the
  lease expires after ``probe_lease_seconds`` if its holder never reports back (crashed). A
  successful probe **closes** the circuit, a failed one **opens** it again for a new cool-down.
  Every other request skips the target meanwhile.

"Consecutive" is counted across containers on the shared item. A success only writes when this
container's copy shows something to reset (failures > 0, open or half-open), so a healthy
target costs no write per request. Each container trusts its copy of a circuit for
``cache_seconds`` (default 2 s): one container's discovery protects the others within that
time, without a read per request. Any success closes the circuit, the probe's or that of a request
that was already in flight when it opened (the target evidently answers). Storage errors fail
open (a target is treated as closed): the breaker must never be the reason traffic stops.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Permit:
    """Leave to call a target; ``probe`` when this call is the half-open probe."""

    target: str
    probe: bool = False


@dataclass(frozen=True)
class CircuitView:
    state: CircuitState
    open_until: float = 0.0


class CircuitBreaker:
    def __init__(
        self,
        store: CircuitStore,
        policy: BreakerPolicy | Callable[[], BreakerPolicy] = BreakerPolicy(),
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        on_open: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._on_open = on_open or (lambda target: None)  # a metric: quotagate.observability
        self._policy = policy if callable(policy) else (lambda: policy)
        self._clock = clock
        self.owner = owner or uuid.uuid4().hex
        self._cache: dict[str, tuple[float, CircuitRecord]] = {}  # target -> (read at, record)
        self._lock = threading.Lock()

    @property
    def policy(self) -> BreakerPolicy:
        return self._policy()

    def now(self) -> float:
        return self._clock()

    # -- reading ---------------------------------------------------------------------------------
    def _records(self, targets: Sequence[str]) -> dict[str, CircuitRecord]:
        now = self._clock()
        ttl = self.policy.cache_seconds
        with self._lock:
            fresh = {t: entry[1] for t in targets if (entry := self._cache.get(t)) and now - entry[0] < ttl}
        stale = [t for t in dict.fromkeys(targets) if t not in fresh]
        if stale:
            try:
                found = self._store.get_many(stale)
            except Exception as error:  # fail open, and do not hammer a failing store
                logger.warning("circuit state unavailable, treating as closed: %s", type(error).__name__)
                found = {}
            with self._lock:
                for target in stale:
                    record = found.get(target, CircuitRecord(target))
                    self._cache[target] = (now, record)
                    fresh[target] = record
        return fresh

    def views(self, targets: Sequence[str]) -> dict[str, CircuitView]:
        """The state of each target as this container knows it (refreshed when older than
        ``cache_seconds``; one batched read for all stale targets)."""
        now = self._clock()
        return {t: CircuitView(r.view(now), r.open_until) for t, r in self._records(targets).items()}

    def _fresh(self, target: str) -> CircuitRecord | None:
        entry = self._cache.get(target)
        if entry is not None and self._clock() - entry[0] < self.policy.cache_seconds:
            return entry[1]
        return None

    def cached_views(self, targets: Sequence[str]) -> dict[str, CircuitView] | None:
        """``views`` when every target's copy is fresh (no I/O: callable on the event loop), else None."""
        now = self._clock()
        views = {}
        for target in targets:
            record = self._fresh(target)
            if record is None:
                return None
            views[target] = CircuitView(record.view(now), record.open_until)
        return views

    def allow_cached(self, target: str) -> Permit | None:
        """A Permit when this container's fresh copy says closed (no I/O); None means: ask ``allow``."""
        record = self._fresh(target)
        if record is not None and record.view(self._clock()) == CircuitState.CLOSED:
            return Permit(target)
        return None

    def success_needs_write(self, permit: Permit) -> bool:
        """Whether ``record_success`` would write (else it can be skipped, with no I/O)."""
        entry = self._cache.get(permit.target)
        record = entry[1] if entry else None
        return permit.probe or (record is not None and (record.failures > 0 or record.state != CircuitState.CLOSED))

    def _remember(self, record: CircuitRecord | None) -> None:
        if record is not None:
            with self._lock:
                self._cache[record.target] = (self._clock(), record)

    # -- deciding --------------------------------------------------------------------------------
    def allow(self, target: str) -> Permit | None:
        """Right before calling ``target``: a Permit, or None to skip it (open, or half-open with
        the probe taken by someone else)."""
        record = self._records([target])[target]
        now = self._clock()
        view = record.view(now)
        if view == CircuitState.CLOSED:
            return Permit(target)
        if view == CircuitState.OPEN or not record.probe_free(now):
            return None
        policy = self.policy
        try:
            taken, current = self._store.acquire_probe(target, now, policy.probe_lease_seconds, self.owner)
        except Exception as error:
            logger.warning("circuit probe lease unavailable: %s", type(error).__name__)
            return Permit(target)  # fail open
        self._remember(current)
        if taken:
            logger.info("circuit half-open: probing %s", target)
            return Permit(target, probe=True)
        return None

    # -- reporting -------------------------------------------------------------------------------
    def record_success(self, permit: Permit) -> None:
        target = permit.target
        with self._lock:
            entry = self._cache.get(target)
        record = entry[1] if entry else None
        if not self.success_needs_write(permit):
            return  # nothing to reset: no write
        try:
            self._remember(self._store.close(target, self._clock()))
            if permit.probe or (record is not None and record.state == CircuitState.OPEN):
                logger.info("circuit closed: %s", target)
        except Exception as error:
            logger.warning("could not record a success of %s: %s", target, type(error).__name__)

    def record_failure(self, permit: Permit) -> None:
        target = permit.target
        policy = self.policy
        now = self._clock()
        try:
            if permit.probe:
                record = self._store.reopen(target, now, policy.cooldown_seconds)
                logger.warning("circuit re-opened after a failed probe: %s", target)
                self._on_open(target)
            else:
                record = self._store.add_failure(target, now, policy.failure_threshold, policy.cooldown_seconds)
                if (
                    record.state == CircuitState.OPEN
                    and abs(record.open_until - (now + policy.cooldown_seconds)) < 0.01
                ):
                    logger.warning("circuit opened after %d consecutive failures: %s", record.failures, target)
                    self._on_open(target)
        except Exception as error:
            logger.warning("could not record a failure of %s: %s", target, type(error).__name__)
            return
        self._remember(record)


__all__ = ["CircuitBreaker", "CircuitState", "CircuitView", "Permit"]
