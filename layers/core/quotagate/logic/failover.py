"""The failover loop every endpoint shares: one attempt per target in the router's order, each
failure classified, the circuit breaker told its verdict, Retry-After rounds, and the request's
deadline over all of it.

What an attempt *is* belongs to the endpoint (its translator): it builds the upstream call for one
target and returns once the target has committed (its first data event, or a whole answer). The
loop only knows the outcome of an attempt:

- it returns: the target served; its circuit hears a success;
- :class:`AttemptFailed`: a failure before anything reached the client (connection refused or
  reset, timeout, 408/429/5xx, a target that cannot express the request): the next target is tried;
  when none is left, a target that answered with ``Retry-After`` is tried again after that wait if
  it fits the remaining time (at most ``max_retry_wait`` per wait and ``MAX_RETRY_ROUNDS`` waits);
- :class:`UpstreamError`: the target answered and the request itself is at fault (400, 413...):
  another target would agree, so it is returned to the client as it is;
- :class:`GatewayFault`: the gateway's own code failed: no verdict on the circuit, no failover.

:meth:`Failover.within_first_byte` runs an attempt's upstream call inside the target's first-byte
timeout (cut short by the deadline) and turns whatever it raises into one of the above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
from anyio import to_thread

from quotagate.errors import GatewayError
from quotagate.logic.breaker import caller_of
from quotagate.providers.exceptions import StreamInterrupted, UpstreamError, UpstreamTimeout

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from quotagate.config import Target, Timeouts
    from quotagate.logic.breaker import CircuitBreaker, Permit
    from quotagate.logic.request_types import Outcome

T = TypeVar("T")

MAX_RETRY_ROUNDS = 2  # Retry-After waits per request, once every target has failed
DEFAULT_MAX_RETRY_WAIT = 20.0  # seconds; longer Retry-After hints are passed on to the client
# A target that cannot express the request (features the provider lacks): try the next one.
UNSUPPORTED_CODES = frozenset({"unsupported_for_provider", "unsupported_for_model"})
# The gateway's own setup for a provider (its credentials, its region): try the next target, but
# the target did nothing wrong, so its circuit is not told.
GATEWAY_SIDE_CODES = frozenset({"provider_credentials_unavailable", "provider_misconfigured"})
INTERNAL_ERROR_MESSAGE = "The gateway had an internal error."
DEADLINE_MESSAGE = "The request did not complete within the model's deadline."


def log_warning(message: str, **fields: Any) -> None:
    """A structured warning through the proxy's Powertools logger (imported on first use)."""
    try:
        from quotagate.observability import logger
    except ImportError:  # pragma: no cover - Powertools is a runtime dependency
        logging.getLogger("quotagate.gateway").warning("%s %s", message, fields)
        return
    logger.warning(message, extra=fields)


def log_gateway_fault(message: str, error: BaseException, **fields: Any) -> None:
    """An error of the gateway's own code, with its traceback (it is our bug, not the target's)."""
    try:
        from quotagate.observability import logger
    except ImportError:  # pragma: no cover - Powertools is a runtime dependency
        logging.getLogger("quotagate.gateway").error("%s %s", message, fields, exc_info=error)
        return
    logger.error(message, exc_info=error, extra={**fields, "error_type": type(error).__name__})


class AttemptFailed(Exception):
    """A target failed before anything reached the client: try the next one."""

    def __init__(self, error: UpstreamError, count_against_target: bool = True) -> None:
        super().__init__(error.message)
        self.error = error
        self.count_against_target = count_against_target


class GatewayFault(Exception):
    """The gateway's own code failed during an attempt (serialising the body, an adapter or a
    translation bug): the target did nothing wrong, so its circuit gets no verdict."""


def classify(error: UpstreamError) -> Exception:
    """Before the first byte: which upstream errors move on to the next target."""
    if error.code in UNSUPPORTED_CODES or error.code in GATEWAY_SIDE_CODES:
        return AttemptFailed(error, count_against_target=False)
    if error.status >= 500 or error.status in (408, 429):
        return AttemptFailed(error)
    return error  # a client error: returned as it is


def classify_gateway_error(error: GatewayError) -> Exception:
    # e.g. the gateway's credentials for this provider are unavailable (503): another target may
    # serve, but the target itself did nothing wrong, so its circuit is not told.
    if error.status >= 500:
        return AttemptFailed(
            UpstreamError(error.status, error.message, error_type=error.type, code=error.code),
            count_against_target=False,
        )
    return error


def client_error(error: UpstreamError) -> GatewayError:
    """An upstream error as the client sees it (with its Retry-After, rounded up to seconds)."""
    headers = {"retry-after": str(max(1, math.ceil(error.retry_after)))} if error.retry_after else {}
    return GatewayError(error.status, error.message, error.error_type, error.code, headers=headers)


def deadline_exceeded() -> GatewayError:
    return GatewayError(504, DEADLINE_MESSAGE, "timeout", "deadline_exceeded")


def unavailable(model: str, retry_after: float = 1.0) -> GatewayError:
    """No target of the model can be tried (every circuit open)."""
    return GatewayError(
        503,
        f"No upstream for the model '{model}' is available right now.",
        "api_error",
        "upstream_unavailable",
        headers={"retry-after": str(max(1, math.ceil(retry_after)))},
    )


class Deadline:
    """The request's time budget on the gateway's clock: the alias's ``deadline`` capped by the
    gateway's request limit, so that a request always ends — and settles its quota — before the
    Lambda timeout would kill it mid-stream and strand the reservation."""

    def __init__(self, clock: Callable[[], float], at: float | None) -> None:
        self.clock = clock
        self.at = at

    @classmethod
    def starting(cls, clock: Callable[[], float], started: float, *limits: float | None) -> Deadline:
        in_force = [limit for limit in limits if limit is not None]
        return cls(clock, started + min(in_force) if in_force else None)

    def remaining(self) -> float:
        return math.inf if self.at is None else self.at - self.clock()


async def bounded(awaitable: Awaitable[T], timeout: float) -> T:
    """``awaitable`` within ``timeout`` seconds, else TimeoutError. The awaitable runs as its own
    task and is cancelled (edge-triggered) so its clean-up can still await."""
    task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
    try:
        await asyncio.sleep(0)  # one step: an awaitable that completes at once needs no timer
        done = {task} if task.done() else (await asyncio.wait({task}, timeout=max(timeout, 0.0)))[0]
    except BaseException:
        task.cancel()
        with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
            await task
        raise
    if not done:
        task.cancel()
        with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
            await task
        raise TimeoutError
    return task.result()


def attempt_failure(target: Target, error: Exception, first_byte: float, cut_by_deadline: bool) -> Exception:
    """What an exception raised while calling a target (up to its first byte) means for failover."""
    if isinstance(error, TimeoutError):
        if cut_by_deadline:
            return AttemptFailed(UpstreamError(504, DEADLINE_MESSAGE, error_type="timeout", code="deadline_exceeded"))
        return AttemptFailed(
            UpstreamTimeout(f"Upstream provider '{target.provider}' did not answer within {first_byte:g}s.")
        )
    if isinstance(error, StopAsyncIteration):
        message = f"Upstream provider '{target.provider}' closed the stream without sending anything."
        return AttemptFailed(UpstreamError(502, message, code="upstream_error"))
    if isinstance(error, StreamInterrupted):
        return AttemptFailed(UpstreamError(502, str(error), code="upstream_stream_interrupted"))
    if isinstance(error, UpstreamError):
        return classify(error)
    if isinstance(error, GatewayError):
        return classify_gateway_error(error)
    # Adapters turn upstream failures into UpstreamError: anything else is the gateway's own code
    # failing, e.g. a body httpx cannot serialise.
    log_gateway_fault("gateway error while calling an upstream", error, target=target.id)
    return GatewayFault()


def provider_for(providers: Any, target: Target) -> Any:
    """``providers.for_target(target)``; a provider the gateway cannot set up (its credentials, its
    configuration) is the gateway's doing, not the target's: the next target is tried, this
    target's circuit is not told."""
    try:
        return providers.for_target(target)
    except GatewayError as error:
        raise AttemptFailed(
            UpstreamError(error.status, error.message, code=error.code), count_against_target=False
        ) from None


@dataclass
class Served(Generic[T]):
    """The target that committed, its permit, and what the endpoint's attempt returned."""

    target: Target
    permit: Permit
    result: T


class Failover:
    """One request's walk over its targets (see the module docstring)."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        timeouts: Callable[[Target], Timeouts],
        deadline: Deadline,
        outcome: Outcome,
        sleep: Callable[[float], Awaitable[None]],
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
    ) -> None:
        self.breaker = breaker
        self.timeouts = timeouts
        self.deadline = deadline
        self.outcome = outcome
        self.sleep = sleep
        self.max_retry_wait = max_retry_wait
        self._retry_at: dict[str, float] = {}  # target id -> when its Retry-After allows another try
        self._last: UpstreamError | None = None

    async def run(self, order: Sequence[Target], attempt: Callable[[Target], Awaitable[T]]) -> Served[T]:
        """The first target whose attempt succeeds; raises GatewayError when none does."""
        pending: list[Target] = list(order)
        rounds = 0
        while True:
            served = await self._round(pending, attempt)
            if served is not None:
                return served
            pending = await self._wait_for_retry(order, rounds)
            if not pending:
                raise self._exhausted()
            rounds += 1

    async def within_first_byte(self, target: Target, call: Awaitable[T]) -> T:
        """``call`` bounded by the target's first-byte timeout (or what is left of the deadline),
        its failures turned into :class:`AttemptFailed`, ``UpstreamError`` or :class:`GatewayFault`."""
        first_byte = self.timeouts(target).first_byte
        remaining = self.deadline.remaining()
        if self.outcome.upstream_called_at is None:
            self.outcome.upstream_called_at = self.deadline.clock()
        try:
            return await bounded(call, min(first_byte, remaining))
        except Exception as error:
            raise attempt_failure(target, error, first_byte, remaining < first_byte) from None

    # -- one round over the pending targets -------------------------------------------------------
    async def _round(self, pending: list[Target], attempt: Callable[[Target], Awaitable[T]]) -> Served[T] | None:
        for target in pending:
            if self.deadline.remaining() <= 0:
                self._last = None
                return None
            caller = caller_of(self.outcome.identity.tenant)
            permit = self.breaker.allow_cached(target.id, caller) or await to_thread.run_sync(
                self.breaker.allow, target.id, caller
            )
            if permit is None:
                self.outcome.attempts.append(f"{target.id}: skipped (circuit open)")
                continue
            try:
                result = await self._attempt(target, permit, attempt)
            except AttemptFailed as failed:
                await self._failed(target, permit, failed)
                continue
            return Served(target, permit, result)
        return None

    async def _attempt(self, target: Target, permit: Permit, attempt: Callable[[Target], Awaitable[T]]) -> T:
        breaker = self.breaker
        try:
            result = await attempt(target)
        except AttemptFailed:
            raise
        except UpstreamError as error:
            # The target answered: the request itself is at fault, another target would agree.
            if breaker.success_needs_write(permit):
                await to_thread.run_sync(breaker.record_success, permit)
            self.outcome.error = error.message
            raise client_error(error) from None
        except GatewayFault:
            # Our bug, not the target's: no verdict on its circuit (a probe's lease simply
            # expires), no failover (the next target would meet the same bug), a logged 500.
            self.outcome.error = "gateway internal error"
            raise GatewayError(500, INTERNAL_ERROR_MESSAGE, "api_error", "internal_error") from None
        except BaseException:
            # Cancelled (the client left) or an unexpected error: a probe that cannot report
            # a verdict re-opens the circuit for a cool-down rather than hold its lease.
            if permit.probe:
                with anyio.CancelScope(shield=True):
                    await to_thread.run_sync(breaker.record_failure, permit)
            raise
        if breaker.success_needs_write(permit):
            await to_thread.run_sync(breaker.record_success, permit)
        return result

    async def _failed(self, target: Target, permit: Permit, failed: AttemptFailed) -> None:
        error = failed.error
        self._last = error
        self.outcome.attempts.append(f"{target.id}: {error.status} {error.code}")
        log_warning(
            "upstream attempt failed",
            request_id=self.outcome.request_id,
            model=self.outcome.model,
            target=target.id,
            status=error.status,
            code=error.code,
        )
        if failed.count_against_target:
            await to_thread.run_sync(self.breaker.record_failure, permit)
        if error.retry_after is not None:
            self._retry_at[target.id] = self.deadline.clock() + error.retry_after

    # -- after a round where nothing served ----------------------------------------------------------
    async def _wait_for_retry(self, order: Sequence[Target], rounds: int) -> list[Target]:
        """Wait for the soonest Retry-After if it fits the budget; the targets it frees (or none)."""
        remaining = self.deadline.remaining()
        if not self._retry_at or rounds >= MAX_RETRY_ROUNDS or remaining <= 0:
            return []
        clock = self.deadline.clock
        wait = max(0.0, min(self._retry_at.values()) - clock())
        if wait > self.max_retry_wait or wait >= remaining:
            return []
        await self.sleep(wait)
        now = clock()
        pending = [t for t in order if self._retry_at.get(t.id, math.inf) <= now]
        for target in pending:
            self._retry_at.pop(target.id, None)
        return pending

    def _exhausted(self) -> GatewayError:
        last = self._last
        if last is not None:
            self.outcome.error = last.message
            return client_error(last)
        if self.deadline.remaining() <= 0:
            self.outcome.error = "deadline exceeded"
            return deadline_exceeded()
        self.outcome.error = "no target available"
        return unavailable(self.outcome.requested_model or self.outcome.model)
