"""Exact token / request / dollar quotas: reserve before the model is called, settle after.

``windows`` is the pure arithmetic, ``ledger`` the storage (DynamoDB or in memory), ``reservation``
the values of the quota protocol, ``service`` the logic the proxy calls.
"""

from quotagate.quota.exceptions import LedgerBusy, LedgerUnavailable, QuotaExceeded, ReservationExists
from quotagate.quota.ledger import DynamoQuotaLedger, InMemoryQuotaLedger, QuotaLedger, ReservationStatus
from quotagate.quota.reservation import Reservation, ReservationRequest, ratelimit_headers
from quotagate.quota.service import QuotaService
from quotagate.quota.windows import WindowCharge, WindowUsage, format_duration, scope_pk

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
