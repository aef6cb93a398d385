"""Values from callers (tenant, consumer, key, subject: JWT claims, keys-API fields) become parts of
table keys joined by ``#``. :func:`key_part` escapes each part, so no value can spell another item's
key: a JWT tenant ``li#key#K`` once wrote its usage onto key K's counters of tenant ``li``."""

from __future__ import annotations

SEPARATOR = "#"


def key_part(value: str) -> str:
    """``value`` as one part of a table key: ``%`` and ``#`` percent-escaped (``%25``, ``%23``), so
    every other value, the usual ones included, keeps its spelling."""
    return value.replace("%", "%25").replace(SEPARATOR, "%23")
