"""A short in-memory cache of key records for the proxy: one read per key per container per TTL,
so revocations and plan changes reach the proxy within seconds without a read per request."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from quotagate.dal.keys_store import KeyRecord, KeyStore

DEFAULT_TTL_SECONDS = 15.0
_MAX_ENTRIES = 10_000


class CachedKeyRecords:
    def __init__(
        self, store: KeyStore, ttl_seconds: float = DEFAULT_TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[str, tuple[float, KeyRecord | None]] = {}
        self._lock = threading.Lock()

    def get(self, key_id: str) -> KeyRecord | None:
        now = self._clock()
        entry = self._entries.get(key_id)
        if entry and now - entry[0] < self._ttl:
            return entry[1]
        return self.get_fresh(key_id, now)

    def peek(self, key_id: str) -> KeyRecord | None:
        """The cached record while it is fresh, else None; never reads the store."""
        entry = self._entries.get(key_id)
        if entry and self._clock() - entry[0] < self._ttl:
            return entry[1]
        return None

    def get_fresh(self, key_id: str, now: float | None = None) -> KeyRecord | None:
        """Read the record from the store (and cache it): for when the cached copy may predate a
        change the caller has evidence of, such as a rotation the authorizer has already seen."""
        now = self._clock() if now is None else now
        record = self._store.get(key_id)
        with self._lock:
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[key_id] = (now, record)
        return record
