"""The values and service interfaces the request path's modules share: a leaf of the request path.

The gateway (:mod:`quotagate.logic.gateway`) builds the request path out of admission, failover,
the exchange and the endpoints; those modules see the gateway only through
:class:`GatewayServices` (a protocol), and share :class:`Outcome` and :class:`Limits` from here,
so the imports run one way: gateway → admission/exchange/failover → this module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from quotagate.config import GatewayConfig, Plan, Target
    from quotagate.dal.keys_store import KeyRecord
    from quotagate.dal.tenants_store import TenantRecord
    from quotagate.identity import Identity
    from quotagate.logic.breaker import CircuitBreaker
    from quotagate.logic.metering import Usage
    from quotagate.logic.pricing import PriceModifiers
    from quotagate.logic.router import Resolution, Router
    from quotagate.providers.base import ChatProvider
    from quotagate.quota.reservation import Reservation, ReservationRequest
    from quotagate.usage.record import Settlement


@dataclass
class Outcome:
    """What happened to one request, for logs and metrics."""

    request_id: str
    identity: Identity
    model: str  # the alias that served (after any downgrade)
    status: int = 200
    usage: Usage | None = None
    cost_usd: float = 0.0
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    requested_model: str | None = None
    target: str | None = None  # <provider>/<upstream model> that served, if any
    attempts: list[str] = field(default_factory=list)  # "<target>: <what happened>" per failed attempt
    # For metrics (quotagate.observability), on the gateway's clock like ``started``.
    upstream_called_at: float | None = None  # the first upstream call began (gateway overhead)
    first_byte_at: float | None = None  # the serving target's first byte arrived
    finished_at: float | None = None  # settled
    reserved_tokens: int = 0
    reserved_usd: float = 0.0
    settlement_failed: bool = False
    overrun_tokens: int = 0  # settled usage above everything reserved (top-ups included)
    cut_by_budget: bool = False  # the gateway ended the answer with "length": the budget was spent
    top_ups: int = 0

    @property
    def failovers(self) -> int:
        """Targets that were tried and failed (skipped open circuits are not failovers)."""
        return sum(1 for attempt in self.attempts if not attempt.endswith("(circuit open)"))


@dataclass
class Limits:
    plan: Plan
    key_limits: dict[str, float]
    allowed_models: list[str] | None
    # The tenant's record, or the config's default_tenant_limits when it has none: the same for
    # every key and JWT of the tenant, whatever their plans.
    tenant_limits: dict[str, float] = field(default_factory=dict)


def usage_fields(identity: Identity, requested_model: str, model: str) -> dict[str, str]:
    """Who asked for what: the part of the usage record known before the upstream call."""
    return {
        "tenant": identity.tenant,
        "consumer": identity.consumer,
        "key_id": identity.key_id,
        "auth_type": identity.auth_type,
        "plan": identity.plan,
        "requested_model": requested_model,
        "model": model,
    }


class ProviderFactory(Protocol):
    def for_target(self, target: Target) -> ChatProvider: ...


class KeyRecords(Protocol):
    def get(self, key_id: str) -> KeyRecord | None: ...

    def peek(self, key_id: str) -> KeyRecord | None:
        """The record if it is at hand without a store read, else None."""
        ...

    def get_fresh(self, key_id: str) -> KeyRecord | None: ...


class TenantRecords(Protocol):
    def get(self, tenant: str) -> TenantRecord | None: ...

    def is_cached(self, tenant: str) -> bool:
        """Whether ``get`` answers without a store read."""
        ...


class Quota(Protocol):
    @property
    def blocking(self) -> bool:
        """Whether its calls may wait on I/O (:mod:`quotagate.logic.store_calls`)."""
        ...

    def reserve(self, request: ReservationRequest) -> Reservation: ...

    def settle(
        self,
        reservation: Reservation,
        prompt_tokens: int,
        completion_tokens: int,
        actual_usd: float,
        settlement: Settlement | None = None,
        cache_tokens: dict[str, int] | None = None,
    ) -> bool: ...

    def top_up(self, reservation: Reservation, extra_tokens: int, extra_usd: float) -> bool:
        """Grow an open reservation in the same windows; False when a window has no room."""
        ...

    def write_record(self, reservation: Reservation) -> None:
        """Write the usage record a reservation without windows deferred (a no-op otherwise)."""
        ...

    def read_remaining(self, reservation: Reservation) -> None:
        """Fill in the ``used`` of the reservation's windows (for ``x-ratelimit-remaining-*``)."""
        ...

    def room(self, request: ReservationRequest) -> tuple[int | None, float | None]:
        """What the request's tightest token and dollar windows have left now (None: no such window)."""
        ...

    def count_refused(
        self, key_id: str, tenant: str, key_limits: Mapping[str, float], tenant_limits: Mapping[str, float]
    ) -> int:
        """Count one refused request in the key's and tenant's request-count windows only."""
        ...


class GatewayServices(Protocol):
    """What admission, the exchange and the endpoints use of the gateway that runs them."""

    quota: Quota
    providers: ProviderFactory
    router: Router
    breaker: CircuitBreaker
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    keepalive_seconds: float
    max_body_bytes: int
    max_retry_wait: float
    max_request_seconds: float | None
    on_finished: Callable[[Outcome], None]

    @property
    def config(self) -> GatewayConfig:
        """The configuration in force."""
        ...

    def limits_for(self, identity: Identity) -> Limits:
        """What the caller may spend and call (raises GatewayError 401/403)."""
        ...

    def limits_at_hand(self, identity: Identity) -> bool:
        """Whether ``limits_for`` needs no store read (the records it reads are cached)."""
        ...

    def resolve(self, name: str, limits: Limits) -> Resolution:
        """The alias and the targets this plan may use for ``name``."""
        ...

    def refuses_unknown_fields(self, model: str) -> bool:
        """Whether ``model`` refuses undeclared request fields (else they are dropped and named)."""
        ...

    def settle(
        self,
        reservation: Reservation,
        target: Target | None,
        usage: Usage,
        settlement: Settlement | None = None,
        modifiers: PriceModifiers | None = None,
    ) -> float:
        """Settle at ``target``'s price and the request's price ``modifiers`` (blocking: the quota
        store); the cost."""
        ...
