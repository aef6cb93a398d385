"""The shared request path of the mock's generating endpoints (chat completions, Anthropic Messages,
Bedrock Converse): an :class:`Exchange` takes one request from its accounting ticket to its reply,
with the faults every dialect honours (``delay_first_byte``, ``status``, ``drop_after``) and the token
delays; a :class:`PlanStream` streams a reply and counts its outcome once. A dialect module subclasses
both and answers in its API's shape (:class:`Rejection` for its errors)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from starlette.responses import Response, StreamingResponse

from quotagate_tools.mock.faults import FaultSpec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request
    from starlette.types import Receive, Scope, Send

    from quotagate_tools.mock.billing import Charges
    from quotagate_tools.mock.settings import MockSettings
    from quotagate_tools.mock.stats import MockStats, Outcome, Ticket

logger = logging.getLogger("quotagate_tools.mock")

REDACTED_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization", "cookie"})


class StreamCut(Exception):
    """Raised inside a response on purpose so that the ASGI server aborts the connection."""


class Rejection(Exception):
    """A request refused with an error response in the shape of its API."""

    def response(self) -> Response:
        raise NotImplementedError


def redacted_headers(request: Request) -> dict[str, str]:
    return {k: ("<redacted>" if k in REDACTED_HEADERS else v) for k, v in request.headers.items()}


async def sleep_or_disconnect(request: Request, seconds: float) -> bool:
    """Sleep ``seconds``; return True early if the client disconnects meanwhile."""
    if seconds <= 0:
        return False

    async def wait_disconnect() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    waiter = asyncio.ensure_future(wait_disconnect())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
        return waiter in done
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await waiter


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class CutBodyResponse(Response):
    """A non-stream response that announces its full length, sends half, then aborts."""

    def __init__(self, body: bytes, ticket: Ticket, headers: dict[str, str]) -> None:
        super().__init__(body, status_code=200, headers=headers, media_type="application/json")
        self._ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        self._ticket.finish("cut")
        logger.info("mock: cutting a non-stream response on purpose (drop_after)")
        raise StreamCut("mock drop_after: response cut on purpose")


class Reply(Protocol):
    """What the shared handling of a generating request reads of its plan."""

    @property
    def stream(self) -> bool: ...

    @property
    def fault(self) -> FaultSpec: ...

    @property
    def token_delay(self) -> float: ...

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    @property
    def delay_steps(self) -> int:
        """How many token delays the whole reply takes."""
        ...

    def charges(self) -> Charges:
        """What the whole reply bills (see :mod:`quotagate_tools.mock.billing`)."""
        ...


PlanT = TypeVar("PlanT", bound=Reply)


class PlanStream(StreamingResponse, Generic[PlanT]):
    """A streamed reply that accounts for its outcome exactly once: ``_events`` sets ``_outcome`` to
    "completed" (counting the plan's tokens) or "cut"; a stream that ends otherwise is a disconnect."""

    media_type = "text/event-stream"

    def __init__(self, plan: PlanT, ticket: Ticket, headers: dict[str, str]) -> None:
        self._plan = plan
        self._ticket = ticket
        self._outcome: Outcome | None = None
        super().__init__(self._events(), media_type=self.media_type, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            iterator = self.body_iterator
            if hasattr(iterator, "aclose"):
                with contextlib.suppress(Exception):
                    await iterator.aclose()
            if self._outcome == "completed":
                self._ticket.finish("completed", self._plan.prompt_tokens, self._plan.completion_tokens)
            else:
                self._ticket.finish(self._outcome or "disconnect")

    def _events(self) -> AsyncIterator[bytes]:
        raise NotImplementedError


class Exchange(Generic[PlanT]):
    """One request to a generating endpoint (chat completions, Anthropic Messages, Bedrock Converse),
    handled alike from the accounting ticket to the reply: ``prepare`` (authentication, the JSON
    body, the request record, the plan), then the faults (``delay_first_byte``, ``status``), then a
    stream, a body cut on purpose (``drop_after``) or the whole body, each after the token delays it
    stands for. A subclass answers each step in the shape of its API."""

    rejection: ClassVar[type[Rejection]]  # what prepare raises for a request it refuses

    def __init__(self, request: Request) -> None:
        self.request = request
        self.settings: MockSettings = request.app.state.settings
        self.stats: MockStats = request.app.state.stats

    async def prepare(self) -> PlanT:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        """The headers of every answer to a request that passed ``prepare``."""
        raise NotImplementedError

    def injected(self, fault: FaultSpec, headers: dict[str, str]) -> Response:
        """The error a ``status=`` fault answers."""
        raise NotImplementedError

    def stream(self, plan: PlanT, ticket: Ticket, headers: dict[str, str]) -> Response:
        raise NotImplementedError

    def body(self, plan: PlanT, *, cut: bool) -> bytes:
        """The non-stream JSON body (``cut``: the one that will be sent half)."""
        raise NotImplementedError

    def record(self, body: dict[str, Any], model: Any, stream: Any, **extra: Any) -> None:
        self.stats.record(
            {
                "time": time.time(),
                "model": model,
                "stream": stream,
                **extra,
                "headers": redacted_headers(self.request),
                "body": body,
            }
        )

    async def respond(self) -> Response:
        request = self.request
        ticket = self.stats.begin()
        handed_off = False
        try:
            try:
                plan = await self.prepare()
            except self.rejection as rejection:
                ticket.finish("error")
                return rejection.response()
            except RecursionError:
                # Content the mock cannot expand (a recursive schema): a clean 500, as a provider that
                # chokes on a request answers. Raised, it made uvicorn drop the keep-alive connection
                # after the response, and the next request on it (another tenant's) failed to read.
                ticket.finish("error")
                return self.injected(FaultSpec(status=500), self.headers())

            fault = plan.fault
            headers = self.headers()
            if fault.delay_first_byte and await sleep_or_disconnect(request, fault.delay_first_byte):
                ticket.finish("disconnect")
                return Response(status_code=499)  # nobody is listening any more
            if fault.status is not None:
                ticket.finish("error")
                return self.injected(fault, headers)
            # From here the model generates the whole reply: a provider bills it, read or not.
            charges = plan.charges()
            self.stats.bill(charges.usd(), charges.prompt_tokens + charges.completion_tokens)

            if plan.stream:
                handed_off = True
                return self.stream(plan, ticket, headers)

            if fault.drop_after is not None:
                wait = min(fault.drop_after, plan.delay_steps) * plan.token_delay
                if await sleep_or_disconnect(request, wait):
                    ticket.finish("disconnect")
                    return Response(status_code=499)
                handed_off = True
                return CutBodyResponse(self.body(plan, cut=True), ticket, headers)

            if await sleep_or_disconnect(request, plan.delay_steps * plan.token_delay):
                ticket.finish("disconnect")
                return Response(status_code=499)
            ticket.finish("completed", plan.prompt_tokens, plan.completion_tokens)
            return Response(self.body(plan, cut=False), headers=headers, media_type="application/json")
        finally:
            if not handed_off and not ticket.done:  # cancelled (server shutdown) or an unexpected error
                ticket.finish("disconnect")
