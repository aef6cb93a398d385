"""A caller's refused requests count in its request-count windows (issue 18, item 6).

A request the gateway refuses for the client's own fault (a bad or too large body, an unknown
model...) after it knows the caller still costs gateway CPU, so it uses the caller's request rate
like any other request: one unconditional ADD per request-count window of the key and of its tenant
(never tokens or dollars, no reservation item), after the response is sent and best effort (a store
failure is logged, the client's 4xx stays a 4xx). Requests that got a reservation were counted by it.
"""

from __future__ import annotations

from contextvars import ContextVar
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quotagate.identity import Identity
    from quotagate.logic.request_types import GatewayServices

# Refusals that are not the identified caller's doing, or that a window already counted: the edge's
# 401/403 (no trustworthy caller) and the quota's own 429.
NOT_COUNTED = frozenset({HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN, HTTPStatus.TOO_MANY_REQUESTS})

# Whether the current request holds a reservation (which counted it already). One asyncio task per
# HTTP request, and the proxy resets it when it identifies the caller.
_reserved: ContextVar[bool] = ContextVar("quotagate_reserved", default=False)


def start_request() -> None:
    _reserved.set(False)


def mark_reserved() -> None:
    _reserved.set(True)


def counts_refusal(status: int) -> bool:
    """Whether a refusal with ``status`` counts in the caller's request windows."""
    return 400 <= status < 500 and status not in NOT_COUNTED and not _reserved.get()


def count_request(gateway: GatewayServices, identity: Identity) -> None:
    """Count one request of ``identity`` in its request-count windows, best effort (blocking: the
    proxy runs it in a worker thread after the response)."""
    from quotagate.observability import logger

    try:
        limits = gateway.limits_for(identity)
        gateway.quota.count_refused(identity.key_id, identity.tenant, limits.key_limits, limits.tenant_limits)
    except Exception as error:  # the key may be gone, the store busy: the answer is already sent
        logger.warning("refused request not counted", extra={"error_type": type(error).__name__})
