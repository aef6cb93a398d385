"""Exact token / request / dollar quotas: reserve before the model is called, settle after.

``windows`` is the pure arithmetic, ``ledger`` the storage (DynamoDB or in memory), ``reservation``
the values of the quota protocol, ``service`` the logic the proxy calls.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quotagate.quota.exceptions import LedgerBusy, LedgerUnavailable, QuotaExceeded, ReservationExists
    from quotagate.quota.ledger import DynamoQuotaLedger, InMemoryQuotaLedger, QuotaLedger, ReservationStatus
    from quotagate.quota.reservation import Reservation, ReservationRequest, ratelimit_headers
    from quotagate.quota.service import QuotaService
    from quotagate.quota.windows import WindowCharge, WindowUsage, format_duration, scope_pk

# Loaded on first use: the proxy imports quota.reservation at start-up, and importing the package
# must not pull in the ledger and the service (and boto3's types) before a request needs them.
_HOMES = {
    "LedgerBusy": "exceptions",
    "LedgerUnavailable": "exceptions",
    "QuotaExceeded": "exceptions",
    "ReservationExists": "exceptions",
    "DynamoQuotaLedger": "ledger",
    "InMemoryQuotaLedger": "ledger",
    "QuotaLedger": "ledger",
    "ReservationStatus": "ledger",
    "Reservation": "reservation",
    "ReservationRequest": "reservation",
    "ratelimit_headers": "reservation",
    "QuotaService": "service",
    "WindowCharge": "windows",
    "WindowUsage": "windows",
    "format_duration": "windows",
    "scope_pk": "windows",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'quotagate.quota' has no attribute {name!r}")
    return getattr(importlib.import_module(f"quotagate.quota.{home}"), name)


__all__ = [
    "DynamoQuotaLedger",
    "InMemoryQuotaLedger",
    "LedgerBusy",
    "LedgerUnavailable",
    "QuotaExceeded",
    "QuotaLedger",
    "QuotaService",
    "Reservation",
    "ReservationExists",
    "ReservationRequest",
    "ReservationStatus",
    "WindowCharge",
    "WindowUsage",
    "format_duration",
    "ratelimit_headers",
    "scope_pk",
]
