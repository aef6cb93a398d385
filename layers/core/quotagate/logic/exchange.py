"""One admitted, streamed exchange with an upstream — the part of the request path after admission
that every streaming endpoint shares: failover up to the first data event, the output budget (a
guard against a provider that ignores its cap), keep-alives, the idle timeout and the deadline on
the stream, the circuit's verdict on a stream that breaks, and settlement.

What differs per endpoint, and per target within one endpoint, is behind two small interfaces (the
way envoy ai-gateway's ``internal/translator`` puts one translator per endpoint type behind one
request path):

- :class:`UpstreamTranslator` (one per request): for a target, the upstream call to make (its body,
  its provider method) and the :class:`StreamDialect` that reads what comes back. A Messages
  endpoint can send an Anthropic body as it is to an Anthropic target and a translated one to
  the others, all within the same exchange.
- :class:`StreamDialect` (one per committed target): how that stream's events are metered (usage,
  output tokens for the budget), what the client receives for each, and the client protocol's own
  bytes for the ends the gateway writes (a budget cut, an error event, a keep-alive).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio import to_thread

from quotagate import upstream_log
from quotagate.errors import GatewayError
from quotagate.logic.breaker import Permit
from quotagate.logic.failover import (
    DEADLINE_MESSAGE,
    INTERNAL_ERROR_MESSAGE,
    Failover,
    log_gateway_fault,
    log_warning,
    provider_for,
)
from quotagate.logic.metering import Usage
from quotagate.logic.output_budget import OutputBudget
from quotagate.providers.base import SSEEvent
from quotagate.providers.exceptions import StreamInterrupted
from quotagate.usage.record import UsageOutcome, outcome_for_status

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from quotagate.config import Target
    from quotagate.logic.admission import Admitted
    from quotagate.logic.estimate import OutputPlan
    from quotagate.logic.request_types import GatewayServices

Forward = SSEEvent | bytes  # an upstream event to pass on (see StreamDialect.client_bytes), or the gateway's bytes


class StreamDialect(Protocol):
    """How the exchange reads one target's stream, and writes for the client (see module docstring)."""

    keepalive: bytes  # sent while the upstream is silent

    def commits(self, event: SSEEvent) -> bool:
        """Whether this event commits the exchange to the target (its first data event, or the
        end); events before it (upstream keep-alives) are dropped and the target can still be replaced."""
        ...

    def is_end(self, event: SSEEvent) -> bool:
        """The upstream's clean end of the stream."""
        ...

    def is_upstream_error(self, event: SSEEvent) -> bool:
        """The upstream's own error event (its ``error`` is logged redacted, never forwarded)."""
        ...

    def output_tokens(self, event: SSEEvent) -> int:
        """Output tokens (cl100k) this event adds: what the budget must admit before it is forwarded."""
        ...

    def accept(self, event: SSEEvent) -> list[Forward]:
        """Meter (and assemble) an admitted event; what the client receives for it (the clean end
        included)."""
        ...

    def cut(self) -> list[Forward]:
        """The end of an answer the budget cannot pay for, in the client's protocol."""
        ...

    def error_event(self, message: str, code: str, error_type: str) -> bytes:
        """An error event that ends the stream, in the client's protocol."""
        ...

    def client_bytes(self, event: SSEEvent) -> bytes:
        """The client's bytes for an event ``accept`` passed on."""
        ...

    def usage(self) -> Usage:
        """What the target's stream used (provider-reported, else counted)."""
        ...

    def answer(self, cut: bool) -> dict[str, Any]:
        """The whole answer for a client that asked for JSON."""
        ...


class UpstreamTranslator(Protocol):
    """One request's translator: per target, the call to make and the dialect that reads it."""

    def open(self, target: Target, provider: Any) -> AsyncIterator[SSEEvent]:
        """Build the request for ``target`` and start its stream on ``provider`` (the provider's
        adapter for the target). Raises like a provider's ``stream``: UpstreamError before the first
        event, StreamInterrupted after it."""
        ...

    def dialect(self, target: Target) -> StreamDialect:
        """A fresh dialect for reading ``target``'s stream."""
        ...


class Exchange:
    """One admitted request streamed from an upstream: its failover, its body for the client (or
    its JSON answer), and its settlement (exactly once)."""

    def __init__(
        self,
        gateway: GatewayServices,
        admitted: Admitted,
        translator: UpstreamTranslator,
        plan: OutputPlan,
        streamed: bool,
    ) -> None:
        self._gateway = gateway
        self.admitted = admitted
        self.translator = translator
        self.resolution = admitted.route.resolution
        self.outcome = admitted.outcome
        self._plan = plan
        self._streamed = streamed
        self.target: Target | None = None  # the target that served
        self.dialect: StreamDialect | None = None
        self._failover: Failover | None = None
        self._events: AsyncIterator[SSEEvent] | None = None
        self._first: SSEEvent | None = None
        self._budget: OutputBudget | None = None
        self._permit: Permit | None = None
        self._pending: asyncio.Future[SSEEvent] | None = None  # the next upstream event, awaited
        self._last_event_at = 0.0
        self._json: dict[str, Any] | None = None
        self._stream_error: GatewayError | None = None  # how a stream ended badly (for JSON clients)
        self._stream_ended: UsageOutcome | None = None  # for the usage record: a stream's bad end
        self._body_completed = False
        self._finished = False

    @property
    def headers(self) -> dict[str, str]:
        return self.admitted.headers(self.target)

    @property
    def json(self) -> dict[str, Any] | None:
        return self._json

    def _remaining(self) -> float:
        return self.admitted.deadline.remaining()

    # -- the upstream call, with failover -----------------------------------------------------
    async def start(self) -> None:
        """Try the targets in order until one sends its first data event; the exchange is then
        committed to that target."""
        self._failover = self.admitted.failover()
        served = await self._failover.run(self.admitted.route.order, self._attempt)
        target = served.target
        self._events, self._first, self.dialect = served.result
        self.outcome.first_byte_at = self._gateway.clock()
        self._permit = Permit(target.id)  # later (mid-stream) failures are plain failures
        self.target = target
        self.outcome.target = target.id
        factor = self._gateway.config.providers[target.provider].prompt_token_factor
        # Everything reserved beyond this target's prompt is room for its output: at least its whole
        # ceiling (the cap it was sent), so only a provider that ignores its cap is ever cut.
        plan = self._plan
        room = plan.prompt_reserve + plan.output_reserve - plan.prompts[target.id]
        self._budget = OutputBudget(room, factor)

    async def _attempt(self, target: Target) -> tuple[AsyncIterator[SSEEvent], SSEEvent, StreamDialect]:
        """Call one target up to its first data event. Raises what ``Failover.within_first_byte`` raises."""
        assert self._failover is not None
        dialect = self.translator.dialect(target)
        events = self.translator.open(target, provider_for(self._gateway.providers, target))
        try:
            first = await self._failover.within_first_byte(target, _first_commit(events, dialect))
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
                await events.aclose()  # type: ignore[attr-defined]
            raise
        return events, first, dialect

    # -- the streamed body ----------------------------------------------------------------------
    async def body(self) -> AsyncIterator[bytes]:
        """The client's bytes, with keep-alives while the upstream is silent. Any upstream failure
        after the first byte ends the stream with an error event; an answer the budget cannot pay
        for ends the way the client protocol ends a capped answer. Notes whether the client took
        every byte (if not, it disconnected)."""
        assert self.dialect is not None
        dialect = self.dialect
        async for item in self._items():
            yield dialect.client_bytes(item) if isinstance(item, SSEEvent) else item
        self._body_completed = True

    async def collect(self) -> None:
        """For a client that asked for JSON: read the whole (metered) stream and assemble the answer.
        Raises GatewayError if the stream failed (the tokens it produced are still settled)."""
        async for _ in self._items():
            pass
        if self._stream_error is not None:
            raise self._stream_error
        assert self.dialect is not None
        self._json = self.dialect.answer(self.outcome.cut_by_budget)

    async def _items(self) -> AsyncIterator[Forward]:
        """Events to forward (metered, in order) and the gateway's own bytes (keep-alives, errors)."""
        assert self._events is not None and self._first is not None
        event: SSEEvent | None = self._first
        self._last_event_at = self._gateway.clock()
        try:
            while True:
                if event is not None:
                    items, stop = await self._consume(event)
                    for item in items:
                        yield item
                    if stop:
                        return
                event, items, stop = await self._next_event(self._events)
                for item in items:
                    yield item
                if stop:
                    return
        finally:
            with anyio.CancelScope(shield=True):
                pending, self._pending = self._pending, None
                if pending is not None:
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        await pending
                with contextlib.suppress(BaseException):
                    await self._events.aclose()  # type: ignore[attr-defined]

    async def _consume(self, event: SSEEvent) -> tuple[list[Forward], bool]:
        """One upstream event: what to forward, and whether the stream ends with it."""
        assert self.target is not None and self._budget is not None and self.dialect is not None
        dialect = self.dialect
        if dialect.is_end(event):
            return dialect.accept(event), True
        if dialect.is_upstream_error(event):
            # The upstream's own error event: its text is for the operator's log, never for the
            # client (like an upstream error body before the first byte).
            upstream_log.log_upstream_error(self.target.provider, "stream", (event.data or {}).get("error"))
            message = f"Upstream provider '{self.target.provider}' reported an error while streaming the answer."
            return [await self._stream_failed("upstream error event mid-stream", message, "upstream_error")], True
        needed = dialect.output_tokens(event)
        if needed and not self._budget.admit(needed):
            # The budget is spent (or the cap reached): stop the upstream, end cleanly.
            self.outcome.cut_by_budget = True
            return dialect.cut(), True
        return dialect.accept(event), False

    async def _next_event(self, events: AsyncIterator[SSEEvent]) -> tuple[SSEEvent | None, list[Forward], bool]:
        """The next upstream event within the keep-alive interval, the idle timeout and the deadline:
        (the event or None, bytes to send meanwhile, whether the stream ends)."""
        gateway = self._gateway
        if self._pending is None:
            self._pending = asyncio.ensure_future(events.__anext__())
            await asyncio.sleep(0)  # one step: an event the upstream has at hand needs no timer
        if not self._pending.done():
            idle = self._idle_timeout()
            wait = min(gateway.keepalive_seconds, self._last_event_at + idle - gateway.clock(), self._remaining())
            done, _ = await asyncio.wait({self._pending}, timeout=max(wait, 0.0))
            if not done:
                items, stop = await self._silence(idle)
                return None, items, stop
        task, self._pending = self._pending, None
        try:
            event = task.result()
        except StopAsyncIteration:
            ended = "upstream stream ended without [DONE]"
            return None, [await self._stream_failed(ended, "The upstream provider ended the stream early.")], True
        except StreamInterrupted as error:
            return None, [await self._stream_failed(str(error), str(error))], True
        except Exception as error:  # an adapter bug must still end the stream visibly
            return None, [self._gateway_fault(error)], True
        self._last_event_at = gateway.clock()
        return event, [], False

    def _idle_timeout(self) -> float:
        assert self.target is not None
        return self._gateway.config.timeouts_for(self.target).idle

    async def _silence(self, idle: float) -> tuple[list[Forward], bool]:
        """The upstream said nothing for a while: a keep-alive, or the end (deadline, idle timeout)."""
        assert self.target is not None and self.dialect is not None
        if self._remaining() <= 0:
            self.outcome.error = "deadline exceeded"
            self._stream_ended = UsageOutcome.TIMEOUT
            return [self._fail(DEADLINE_MESSAGE, "deadline_exceeded", "timeout", 504)], True
        if self._gateway.clock() - self._last_event_at >= idle:
            message = f"Upstream provider '{self.target.provider}' sent nothing for {idle:g}s."
            self._stream_ended = UsageOutcome.TIMEOUT
            self.outcome.error = "upstream idle timeout"
            await self._record_stream_failure()
            return [self._fail(message, "upstream_timeout", "timeout", 504)], True
        return [self.dialect.keepalive], False

    def _fail(self, message: str, code: str, error_type: str = "api_error", status: int = 502) -> bytes:
        assert self.dialect is not None
        self._stream_error = GatewayError(status, message, error_type, code)
        return self.dialect.error_event(message, code, error_type)

    async def _stream_failed(self, error: str, message: str, code: str = "upstream_stream_interrupted") -> bytes:
        """The target failed after its first byte: its circuit hears it, the client gets an error event."""
        self.outcome.error = error
        self._stream_ended = UsageOutcome.ERROR_EVENT
        await self._record_stream_failure()
        return self._fail(message, code)

    def _gateway_fault(self, error: Exception) -> bytes:
        # ...the gateway's fault, not the target's: its circuit is not told.
        assert self.target is not None
        self.outcome.error = f"{type(error).__name__} while streaming"
        log_gateway_fault(
            "gateway error while streaming", error, request_id=self.outcome.request_id, target=self.target.id
        )
        self._stream_ended = UsageOutcome.ERROR_EVENT
        return self._fail(INTERNAL_ERROR_MESSAGE, "internal_error", status=500)

    async def _record_stream_failure(self) -> None:
        if self._permit is not None:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(self._gateway.breaker.record_failure, self._permit)

    # -- settlement -------------------------------------------------------------------------------
    def usage(self) -> Usage:
        """What the target that served used; nothing when no target produced output."""
        if self.dialect is None or self._first is None:
            return Usage(0, 0, "counted")
        return self.dialect.usage()

    async def finish(self, client_status: int | None = None) -> None:
        """Settle the reservation with the actual usage of the target that served (nothing for
        targets that failed before producing output). Exactly once; survives cancellation."""
        if self._finished:
            return
        self._finished = True
        with anyio.CancelScope(shield=True):
            if self._events is not None:
                with contextlib.suppress(BaseException):
                    await self._events.aclose()  # type: ignore[attr-defined]
            usage = self.usage()
            self._note_overrun(usage)
            status = client_status if client_status is not None else self.outcome.status
            await self.admitted.settle(self.target, usage, self._ended(status), status)

    def _note_overrun(self, usage: Usage) -> None:
        reserved = self.outcome.reserved_tokens
        if reserved and usage.total_tokens > reserved:
            # Settled at the truth all the same; a provider that bills past its cap, or a
            # tokenizer the safety factor underestimates, shows up here.
            self.outcome.overrun_tokens = usage.total_tokens - reserved
            log_warning(
                "usage above the reservation",
                request_id=self.outcome.request_id,
                target=self.outcome.target,
                reserved_tokens=reserved,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )

    def _ended(self, status: int) -> UsageOutcome:
        """How the request ended, for its usage record."""
        if status >= 400 or self._json is not None or not self._streamed:
            return outcome_for_status(status)
        if self._stream_ended is not None:
            return self._stream_ended
        if not self._body_completed:
            return UsageOutcome.CLIENT_DISCONNECT
        return UsageOutcome.OK


async def _first_commit(events: AsyncIterator[SSEEvent], dialect: StreamDialect) -> SSEEvent:
    """The first event that commits the exchange to its target (earlier ones are dropped)."""
    while True:
        event = await events.__anext__()
        if dialect.commits(event):
            return event
