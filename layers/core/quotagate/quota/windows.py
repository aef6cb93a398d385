"""Pure quota arithmetic: fixed UTC windows, integer units, charges, header formatting.

Nothing here does I/O. Every amount the ledger stores is an integer:

- ``requests``: one per request;
- ``tokens``: prompt + output tokens;
- ``usd``: micro-dollars (USD * 1e6). Charges round *up*, limits round *down*, so rounding can
  never let spend pass a budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from quotagate.table_keys import key_part

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


class computed_once(Generic[T]):  # named like functools.cached_property, which it stands for
    """``functools.cached_property`` without the lock Python 3.11 takes on every first access
    (several charges per request, each asked for its keys): the value is a pure function of the
    instance, so two threads that compute it at once store the same value."""

    def __init__(self, compute: Callable[[Any], T]) -> None:
        self._compute = compute
        self._name = compute.__name__

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> computed_once[T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> T | computed_once[T]:
        if instance is None:
            return self
        value = self._compute(instance)
        instance.__dict__[self._name] = value  # found before this descriptor from now on
        return value


class WindowScope(StrEnum):
    """Whose limits a window counts against."""

    KEY = "key"  # one API key (or one JWT subject)
    TENANT = "tenant"  # all of a tenant's keys together


class WindowUnit(StrEnum):
    """What a window counts (always integers)."""

    REQUESTS = "requests"
    TOKENS = "tokens"  # prompt + output tokens
    USD = "usd"  # micro-dollars
    CONCURRENT = "concurrent"  # requests in flight


class WindowPeriod(StrEnum):
    """The fixed UTC window a limit counts in."""

    MINUTE = "minute"
    DAY = "day"
    MONTH = "month"
    EVER = "ever"  # no window: the concurrency counter


# Window limits (everything in config.LIMIT_NAMES except the per-request cap).
WINDOW_LIMITS: dict[str, tuple[WindowUnit, WindowPeriod]] = {
    "requests_per_minute": (WindowUnit.REQUESTS, WindowPeriod.MINUTE),
    "tokens_per_minute": (WindowUnit.TOKENS, WindowPeriod.MINUTE),
    "tokens_per_day": (WindowUnit.TOKENS, WindowPeriod.DAY),
    "tokens_per_month": (WindowUnit.TOKENS, WindowPeriod.MONTH),
    "usd_per_day": (WindowUnit.USD, WindowPeriod.DAY),
    "usd_per_month": (WindowUnit.USD, WindowPeriod.MONTH),
    # Requests in flight: one counter item (no window), +1 at reservation, -1 at settlement (or
    # when the reaper expires the reservation of an environment that died).
    "max_concurrent_requests": (WindowUnit.CONCURRENT, WindowPeriod.EVER),
}
PER_REQUEST_LIMIT = "max_tokens_per_request"
CONCURRENCY_LIMIT = "max_concurrent_requests"
# Per-minute windows and concurrency are rate limits (retrying later helps); day/month windows
# are budgets.
RATE_PERIODS = frozenset({WindowPeriod.MINUTE, WindowPeriod.EVER})
# The "window" of the concurrency counter: all of time (its item outlives any request).
FOREVER = 2**32
# Window items outlive their window by this much (TTL is clean-up only; settlement of a request
# that started in a window always lands well within this margin).
RETENTION_SECONDS = 86_400
MICROS_PER_USD = 1_000_000


def usd_to_micros_ceil(usd: float) -> int:
    """Micro-dollars, rounded up (charges). Uses the float's shortest repr, so 0.1 -> 100000."""
    if usd < 0 or not math.isfinite(usd):
        raise ValueError(f"usd amount must be a finite non-negative number, got {usd!r}")
    return int((Decimal(repr(float(usd))) * MICROS_PER_USD).to_integral_value(ROUND_CEILING))


def usd_to_micros_floor(usd: float) -> int:
    """Micro-dollars, rounded down (limits)."""
    if usd < 0 or not math.isfinite(usd):
        raise ValueError(f"usd amount must be a finite non-negative number, got {usd!r}")
    return int((Decimal(repr(float(usd))) * MICROS_PER_USD).to_integral_value(ROUND_FLOOR))


@lru_cache(maxsize=1024)  # a few configured limits, converted on every request
def limit_units(limit_name: str, value: float) -> int:
    """A configured limit in ledger units (rounded down)."""
    unit, _ = WINDOW_LIMITS[limit_name]
    if unit == WindowUnit.USD:
        return usd_to_micros_floor(value)
    return math.floor(value)


def window_bounds(period: WindowPeriod, now: float) -> tuple[int, int]:
    """[start, end) of the fixed UTC window containing ``now``, as epoch seconds."""
    t = math.floor(now)
    if period == WindowPeriod.MINUTE:
        start = t - t % 60
        return start, start + 60
    if period == WindowPeriod.DAY:
        start = t - t % 86_400
        return start, start + 86_400
    if period == WindowPeriod.EVER:
        return 0, FOREVER
    if period == WindowPeriod.MONTH:
        return _month_bounds(t - t % 86_400)
    raise ValueError(f"unknown period {period!r}")


@lru_cache(maxsize=64)  # one UTC day: the same month for every request of that day
def _month_bounds(day_start: int) -> tuple[int, int]:
    moment = datetime.fromtimestamp(day_start, UTC)
    first = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    following = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return int(first.timestamp()), int(following.timestamp())


@lru_cache(maxsize=1024)  # the window starts of every request's charges, the same for a whole window
def iso_utc(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def scope_pk(scope: WindowScope, scope_id: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'key' or 'tenant', got {scope!r}")
    return f"{scope}#{key_part(scope_id)}"


SCOPES = frozenset(WindowScope)


def window_sk(limit_name: str, window_start: int) -> str:
    if limit_name == CONCURRENCY_LIMIT:
        return limit_name  # one counter item, not one per window
    return f"{limit_name}#{iso_utc(window_start)}"


@dataclass(frozen=True)
class WindowCharge:
    """An amount to reserve in one window item of one scope (a key or a tenant)."""

    scope: WindowScope
    scope_id: str
    limit_name: str  # one of WINDOW_LIMITS
    window_start: int  # epoch seconds, UTC
    window_end: int
    limit: int  # in units (requests, tokens, micro-dollars)
    amount: int  # in units, >= 0
    # The concurrency slot leased for the request (quota.slots), set by the ledger that leased it.
    slot: int | None = None

    # Computed once per charge (the ledger asks for them many times per request).
    @computed_once
    def pk(self) -> str:
        return scope_pk(self.scope, self.scope_id)

    @computed_once
    def sk(self) -> str:
        return window_sk(self.limit_name, self.window_start)

    @computed_once
    def item_key(self) -> tuple[str, str]:
        return self.pk, self.sk

    @property
    def unit(self) -> WindowUnit:
        return WINDOW_LIMITS[self.limit_name][0]

    @property
    def period(self) -> WindowPeriod:
        return WINDOW_LIMITS[self.limit_name][1]

    @property
    def is_rate_limit(self) -> bool:
        return self.period in RATE_PERIODS

    @property
    def max_used_before(self) -> int:
        """The condition operand: the reservation fits iff ``used <= limit - amount``."""
        return self.limit - self.amount

    @property
    def expires_at(self) -> int:
        return self.window_end + RETENTION_SECONDS


def make_charge(
    scope: WindowScope, scope_id: str, limit_name: str, limit_value: float, amount: int, now: float
) -> WindowCharge:
    """The charge of ``amount`` units in the window of ``limit_name`` that contains ``now``."""
    _, period = WINDOW_LIMITS[limit_name]
    start, end = window_bounds(period, now)
    return WindowCharge(
        scope=scope,
        scope_id=scope_id,
        limit_name=limit_name,
        window_start=start,
        window_end=end,
        limit=limit_units(limit_name, limit_value),
        amount=amount,
    )


def format_duration(seconds: float) -> str:
    """OpenAI/Go style reset durations: ``12ms``, ``1s``, ``59.5s``, ``6m0s``, ``1h2m3s``."""
    ms = max(0, math.ceil(round(seconds * 1000, 3)))  # round up to the ms, ignoring float noise
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def retry_after_seconds(window_end: int, now: float) -> int:
    """Whole seconds until the window resets (at least 1), for ``retry-after``."""
    return max(1, math.ceil(window_end - now))


@dataclass(frozen=True)
class WindowUsage:
    """A window's ``used`` as seen by a ledger call (``None``: not known without another read).

    ``exact`` is False when ``used`` is only an upper bound (so ``remaining`` is a lower bound):
    a window that passed its condition in a cancelled transaction had ``used <= limit - amount``.
    """

    charge: WindowCharge
    used: int | None
    exact: bool = True

    @property
    def remaining(self) -> int | None:
        return None if self.used is None else max(0, self.charge.limit - self.used)
