"""Mock OpenAI-compatible model server: the default upstream locally and the tests' upstream.

``create_app(settings)`` builds a Starlette app serving

- ``POST /v1/chat/completions`` (stream and non-stream, OpenAI shapes, real cl100k usage numbers;
  tool calls and ``response_format`` as :mod:`quotagate_tools.mock.structured` describes),
- ``GET /v1/models`` and ``GET /v1/models/{id}``,
- ``GET /mock/stats``, ``POST /mock/stats/reset``, ``GET /mock/requests`` (recent request bodies,
  credentials redacted), ``GET /health``.

The same counters are in-process on ``app.state.stats`` (a :class:`MockStats`).
``run_in_thread`` / :class:`MockServer` serve an app with uvicorn on loopback in a background
thread. Faults are described in :mod:`quotagate_tools.mock.faults`; replies in :mod:`quotagate_tools.mock.vocab`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from quotagate import tokens
from quotagate_tools.mock import billing, structured, vocab
from quotagate_tools.mock.faults import (
    FAULT_BODY_FIELD,
    FAULT_HEADER,
    MAX_TOKENS,
    FaultSpec,
    FaultSpecError,
    parse_fault_spec,
    split_model,
)

logger = logging.getLogger("quotagate_tools.mock")

DEFAULT_MODELS: tuple[str, ...] = ("mock-gpt", "mock-gpt-mini")
DEFAULT_TOKEN_DELAY = 0.02
DEFAULT_REPLY_TOKENS = 24
MAX_TOKEN_DELAY = 60.0
MODEL_CREATED = 1_700_000_000
OWNED_BY = "quotagate-mock"
SYSTEM_FINGERPRINT = "fp_quotagate_mock"
REPLY_TOKENS_FIELD = "mock_reply_tokens"
TOKEN_DELAY_FIELD = "mock_token_delay"  # noqa: S105 (a field name)
_REDACTED_HEADERS = {"authorization", "api-key", "x-api-key", "proxy-authorization", "cookie"}


@dataclass(frozen=True)
class MockSettings:
    """How the mock behaves when a request does not say otherwise."""

    token_delay: float = DEFAULT_TOKEN_DELAY  # seconds between streamed tokens
    reply_tokens: int = DEFAULT_REPLY_TOKENS  # reply length before max_tokens truncation
    models: tuple[str, ...] = DEFAULT_MODELS  # listed by /v1/models (any name is accepted)
    default_fault: str = ""  # a fault spec applied to every request (lowest precedence)
    api_key: str | None = None  # if set, /v1/* requires "Authorization: Bearer <api_key>"
    recent_requests: int = 100  # how many request records MockStats keeps


class StreamCut(Exception):
    """Raised inside a response on purpose so that the ASGI server aborts the connection."""


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


class MockStats:
    """Thread-safe counters of what the mock received and how each response ended.

    ``chat_requests``       POSTs to /v1/chat/completions received (valid or not)
    ``completed``           responses delivered in full (non-stream body; stream up to [DONE])
    ``streams_cut``         responses aborted on purpose by ``drop_after`` (stream or not)
    ``client_disconnects``  responses abandoned because the client went away
    ``error_responses``     error statuses returned (validation, auth, injected ``status=``)
    ``in_flight``           requests being handled now (a gauge: ``reset`` keeps it)
    ``prompt_tokens`` / ``completion_tokens``  summed over completed responses
    """

    COUNTERS: tuple[str, ...] = (
        "chat_requests",
        "completed",
        "streams_cut",
        "client_disconnects",
        "error_responses",
        "in_flight",
        "prompt_tokens",
        "completion_tokens",
    )

    def __init__(self, recent_limit: int = 100) -> None:
        self._cond = threading.Condition()
        self._counts = dict.fromkeys(self.COUNTERS, 0)
        self._recent: deque[dict[str, Any]] = deque(maxlen=max(recent_limit, 1))

    # -- reading
    def snapshot(self) -> dict[str, int]:
        with self._cond:
            return dict(self._counts)

    def __getitem__(self, name: str) -> int:
        with self._cond:
            return self._counts[name]

    @property
    def chat_requests(self) -> int:
        return self["chat_requests"]

    @property
    def completed(self) -> int:
        return self["completed"]

    @property
    def streams_cut(self) -> int:
        return self["streams_cut"]

    @property
    def client_disconnects(self) -> int:
        return self["client_disconnects"]

    @property
    def error_responses(self) -> int:
        return self["error_responses"]

    @property
    def in_flight(self) -> int:
        return self["in_flight"]

    @property
    def recent_requests(self) -> list[dict[str, Any]]:
        """Recent request records, oldest first: ``{"time", "model", "stream", "headers", "body"}``."""
        with self._cond:
            return list(self._recent)

    @property
    def last_request(self) -> dict[str, Any] | None:
        with self._cond:
            return self._recent[-1] if self._recent else None

    def wait_for(self, predicate: Callable[[dict[str, int]], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(snapshot)`` is true (or ``timeout``); returns its last value.

        Useful because some outcomes (a client disconnect) are only seen by the server a moment
        after the client acted."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(dict(self._counts)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # -- writing
    def reset(self) -> None:
        with self._cond:
            in_flight = self._counts["in_flight"]
            self._counts = dict.fromkeys(self.COUNTERS, 0)
            self._counts["in_flight"] = in_flight
            self._recent.clear()
            self._cond.notify_all()

    def _add(self, **deltas: int) -> None:
        with self._cond:
            for name, delta in deltas.items():
                self._counts[name] += delta
            self._cond.notify_all()

    def _record(self, entry: dict[str, Any]) -> None:
        with self._cond:
            self._recent.append(entry)

    def begin(self) -> _Ticket:
        self._add(chat_requests=1, in_flight=1)
        return _Ticket(self)


_OUTCOME_COUNTERS = {
    "completed": "completed",
    "cut": "streams_cut",
    "disconnect": "client_disconnects",
    "error": "error_responses",
}


class _Ticket:
    """One request's accounting; ``finish`` counts exactly once."""

    def __init__(self, stats: MockStats) -> None:
        self._stats = stats
        self.done = False

    def finish(self, outcome: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        if self.done:
            return
        self.done = True
        deltas = {"in_flight": -1, _OUTCOME_COUNTERS[outcome]: 1}
        if outcome == "completed":
            deltas["prompt_tokens"] = prompt_tokens
            deltas["completion_tokens"] = completion_tokens
        self._stats._add(**deltas)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class _Rejection(Exception):
    """A request refused with an error response in the shape of its API."""

    def response(self) -> Response:
        raise NotImplementedError


class _Reject(_Rejection):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# status -> (type, default code, message) for injected errors, modelled on OpenAI's own.
_INJECTED: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (injected by the mock)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (injected by the mock)."),
    403: ("permission_error", "permission_denied", "You are not allowed to do this (injected by the mock)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (injected by the mock)."),
    408: ("timeout", "timeout", "Request timed out (injected by the mock)."),
    409: ("invalid_request_error", "conflict", "Conflict (injected by the mock)."),
    413: ("invalid_request_error", "request_too_large", "Request too large (injected by the mock)."),
    422: ("invalid_request_error", None, "Unprocessable request (injected by the mock)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (injected by the mock)."),
    500: ("server_error", None, "The server had an error processing your request (injected by the mock)."),
    502: ("server_error", "bad_gateway", "Bad gateway (injected by the mock)."),
    503: ("server_error", "overloaded", "The engine is currently overloaded (injected by the mock)."),
    504: ("server_error", "timeout", "Gateway timeout (injected by the mock)."),
}


def _injected_error(fault: FaultSpec) -> _Reject:
    assert fault.status is not None
    status = fault.status
    fallback = ("invalid_request_error" if status < 500 else "server_error", None, f"Error {status} (mock).")
    type_, code, message = _INJECTED.get(status, fallback)
    if fault.code is not None:
        code = fault.code
        if status == 429 and code == "insufficient_quota":
            type_ = "insufficient_quota"
            message = "You exceeded your current quota (injected by the mock)."
    headers = {}
    if status in (429, 503):
        retry_after = fault.retry_after if fault.retry_after is not None else 1
        headers["retry-after"] = f"{retry_after:g}"
    return _Reject(status, message, type_, code, None, headers)


# ---------------------------------------------------------------------------------------------
# Request handling
# ---------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    token_delay: float
    fault: FaultSpec
    tool_call: dict[str, str] | None = None  # {"id", "name"} of the function the reply calls
    tool_pieces: list[str] = field(default_factory=list)  # its arguments, in streamed pieces

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces) + len(self.tool_pieces)

    @property
    def delay_steps(self) -> int:
        return self.completion_tokens

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


def _check_auth(request: Request, settings: MockSettings) -> None:
    if not settings.api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer":
        presented = request.headers.get("api-key", "")
    if not presented or not hmac.compare_digest(presented.strip().encode(), settings.api_key.encode()):
        raise _Reject(401, "Incorrect API key provided.", code="invalid_api_key")


async def _read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _Reject(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise _Reject(400, "The request body must be a JSON object.")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_fault(source: Any, param: str) -> FaultSpec:
    try:
        return parse_fault_spec(source)
    except FaultSpecError as exc:
        raise _Reject(400, f"Invalid mock fault spec in {param}: {exc}", param=param) from None


def _request_fault(
    settings: MockSettings,
    model_fault: str | None,
    header_fault: str | None,
    body: Mapping[str, Any],
    parse: Callable[[Any, str], FaultSpec] = _parse_fault,
    model_param: str = "model",
) -> FaultSpec:
    """The fault a request asks for, each source over the one before: the settings' default, the
    model suffix, the x-mock-fault header, the mock_fault body field. ``parse`` raises the API's
    error for a bad spec (named by where it came from)."""
    fault = parse(settings.default_fault, "settings.default_fault")
    fault = fault.merge(parse(model_fault, model_param))
    fault = fault.merge(parse(header_fault, FAULT_HEADER))
    return fault.merge(parse(body.get(FAULT_BODY_FIELD), FAULT_BODY_FIELD))


def _reply_pace(
    body: Mapping[str, Any],
    settings: MockSettings,
    fault: FaultSpec,
    invalid: Callable[[str, str], Exception],
) -> tuple[int, float]:
    """(reply length in tokens, seconds between tokens): the body's test fields, else the fault's,
    else the settings'. ``invalid(field, problem)`` is the API's error for a bad field."""
    length = settings.reply_tokens if fault.tokens is None else fault.tokens
    requested = body.get(REPLY_TOKENS_FIELD)
    if requested is not None:
        if not _is_int(requested) or not 0 <= requested <= MAX_TOKENS:
            raise invalid(REPLY_TOKENS_FIELD, f"must be an integer from 0 to {MAX_TOKENS}")
        length = requested
    token_delay = settings.token_delay if fault.token_delay is None else fault.token_delay
    delay = body.get(TOKEN_DELAY_FIELD)
    if delay is not None:
        if not _is_number(delay) or not 0 <= delay <= MAX_TOKEN_DELAY:
            raise invalid(TOKEN_DELAY_FIELD, f"must be a number of seconds from 0 to {MAX_TOKEN_DELAY:g}")
        token_delay = float(delay)
    return length, token_delay


def _plan(request: Request, body: dict[str, Any], settings: MockSettings) -> _Plan:  # noqa: C901 -- to split (issue 12)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _Reject(400, "you must provide a model parameter", param="model")
    base_model, model_fault = split_model(model)
    if not base_model:
        raise _Reject(400, "you must provide a model parameter", param="model")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Reject(400, "'messages' must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _Reject(
                400,
                f"Invalid message at messages[{i}]: expected an object with a role.",
                param=f"messages[{i}]",
            )

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _Reject(400, "'stream' must be a boolean.", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise _Reject(400, "'stream_options' must be an object.", param="stream_options")
    include_usage = bool(stream_options.get("include_usage"))

    fault = _request_fault(settings, model_fault, request.headers.get(FAULT_HEADER), body)
    limit = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise _Reject(400, f"'{name}' must be a positive integer.", param=name)
        if fault.cap_field == "max_completion_tokens" and name == "max_tokens":
            # What OpenAI's reasoning models answer.
            raise _Reject(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                param="max_tokens",
                code="unsupported_parameter",
            )
        if limit is None and fault.cap_field in (None, "any", name):
            limit = value
    length, token_delay = _reply_pace(
        body, settings, fault, lambda field, problem: _Reject(400, f"'{field}' {problem}.", param=field)
    )

    finish_reason = "stop"
    pieces = vocab.reply_pieces(messages, length)
    function = structured.chosen_function(body, messages)
    tool_call, tool_pieces = None, []
    if function is not None:
        pieces, finish_reason = [], "tool_calls"
        tool_call = {"id": f"call_mock{uuid.uuid4().hex[:20]}", "name": function["name"]}
        tool_pieces = structured.json_pieces(structured.arguments_for(function, messages))
    else:
        json_text = structured.structured_text(body, messages, pieces)
        if json_text is not None:
            pieces = structured.json_pieces(json_text)
    if limit is not None and limit < len(pieces) + len(tool_pieces):
        finish_reason = "length"
        pieces = pieces[:limit]
        tool_pieces = tool_pieces[: limit - len(pieces)]

    return _Plan(
        model=base_model,
        messages=messages,
        stream=stream,
        include_usage=include_usage,
        pieces=pieces,
        finish_reason=finish_reason,
        prompt_tokens=billing.openai_prompt_tokens(body) if fault.real_billing else tokens.chat_prompt_tokens(messages),
        token_delay=token_delay,
        fault=fault,
        tool_call=tool_call,
        tool_pieces=tool_pieces,
    )


def _redacted_headers(request: Request) -> dict[str, str]:
    return {k: ("<redacted>" if k in _REDACTED_HEADERS else v) for k, v in request.headers.items()}


async def _sleep_or_disconnect(request: Request, seconds: float) -> bool:
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


def _new_ids() -> tuple[str, int]:
    return f"chatcmpl-mock{uuid.uuid4().hex[:24]}", int(time.time())


def _completion_body(plan: _Plan) -> dict[str, Any]:
    completion_id, created = _new_ids()
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": plan.model,
        "choices": [
            {
                "index": 0,
                "message": _reply_message(plan),
                "logprobs": None,
                "finish_reason": plan.finish_reason,
            }
        ],
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if not plan.fault.omit_usage:
        body["usage"] = plan.usage()
    return body


def _reply_message(plan: _Plan) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(plan.pieces) if plan.pieces or plan.tool_call is None else None,
        "refusal": None,
        "annotations": [],
    }
    if plan.tool_call is not None:
        message["tool_calls"] = [
            {
                "id": plan.tool_call["id"],
                "type": "function",
                "function": {"name": plan.tool_call["name"], "arguments": "".join(plan.tool_pieces)},
            }
        ]
    return message


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _CutBodyResponse(Response):
    """A non-stream response that announces its full length, sends half, then aborts."""

    def __init__(self, body: bytes, ticket: _Ticket, headers: dict[str, str]) -> None:
        super().__init__(body, status_code=200, headers=headers, media_type="application/json")
        self._ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        self._ticket.finish("cut")
        logger.info("mock: cutting a non-stream response on purpose (drop_after)")
        raise StreamCut("mock drop_after: response cut on purpose")


class _Reply(Protocol):
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


PlanT = TypeVar("PlanT", bound=_Reply)


class _PlanStream(StreamingResponse, Generic[PlanT]):
    """A streamed reply that accounts for its outcome exactly once: ``_events`` sets ``_outcome`` to
    "completed" (counting the plan's tokens) or "cut"; a stream that ends otherwise is a disconnect."""

    media_type = "text/event-stream"

    def __init__(self, plan: PlanT, ticket: _Ticket, headers: dict[str, str]) -> None:
        self._plan = plan
        self._ticket = ticket
        self._outcome: str | None = None
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


class _ChatStream(_PlanStream[_Plan]):
    """SSE chat.completion.chunk stream."""

    async def _events(self) -> AsyncIterator[bytes]:
        plan = self._plan
        usage_field = plan.include_usage and not plan.fault.omit_usage
        completion_id, created = _new_ids()
        head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": plan.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

        def event(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            chunk = {**head, "choices": [choice]}
            if usage_field:
                chunk["usage"] = None
            return b"data: " + _dumps(chunk) + b"\n\n"

        yield event({"role": "assistant", "content": "", "refusal": None})
        drop_after = plan.fault.drop_after
        for i, piece in enumerate(plan.pieces):
            if drop_after is not None and i >= drop_after:
                break
            await asyncio.sleep(plan.token_delay)
            yield event({"content": piece})
        if plan.tool_call is not None and drop_after is None:
            yield event(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": plan.tool_call["id"],
                            "type": "function",
                            "function": {"name": plan.tool_call["name"], "arguments": ""},
                        }
                    ]
                }
            )
            for piece in plan.tool_pieces:
                await asyncio.sleep(plan.token_delay)
                yield event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        if drop_after is not None:
            self._outcome = "cut"
            sent = min(drop_after, len(plan.pieces))
            logger.info("mock: cutting a stream on purpose after %d token chunks", sent)
            raise StreamCut("mock drop_after: stream cut on purpose")
        yield event({}, plan.finish_reason)
        if usage_field:
            yield b"data: " + _dumps({**head, "choices": [], "usage": plan.usage()}) + b"\n\n"
        yield b"data: [DONE]\n\n"
        self._outcome = "completed"


class _Exchange(Generic[PlanT]):
    """One request to a generating endpoint (chat completions, Anthropic Messages, Bedrock Converse),
    handled alike from the accounting ticket to the reply: ``prepare`` (authentication, the JSON
    body, the request record, the plan), then the faults (``delay_first_byte``, ``status``), then a
    stream, a body cut on purpose (``drop_after``) or the whole body, each after the token delays it
    stands for. A subclass answers each step in the shape of its API."""

    rejection: ClassVar[type[_Rejection]]  # what prepare raises for a request it refuses

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

    def stream(self, plan: PlanT, ticket: _Ticket, headers: dict[str, str]) -> Response:
        raise NotImplementedError

    def body(self, plan: PlanT, *, cut: bool) -> bytes:
        """The non-stream JSON body (``cut``: the one that will be sent half)."""
        raise NotImplementedError

    def record(self, body: dict[str, Any], model: Any, stream: Any, **extra: Any) -> None:
        self.stats._record(
            {
                "time": time.time(),
                "model": model,
                "stream": stream,
                **extra,
                "headers": _redacted_headers(self.request),
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

            fault = plan.fault
            headers = self.headers()
            if fault.delay_first_byte and await _sleep_or_disconnect(request, fault.delay_first_byte):
                ticket.finish("disconnect")
                return Response(status_code=499)  # nobody is listening any more
            if fault.status is not None:
                ticket.finish("error")
                return self.injected(fault, headers)

            if plan.stream:
                handed_off = True
                return self.stream(plan, ticket, headers)

            if fault.drop_after is not None:
                wait = min(fault.drop_after, plan.delay_steps) * plan.token_delay
                if await _sleep_or_disconnect(request, wait):
                    ticket.finish("disconnect")
                    return Response(status_code=499)
                handed_off = True
                return _CutBodyResponse(self.body(plan, cut=True), ticket, headers)

            if await _sleep_or_disconnect(request, plan.delay_steps * plan.token_delay):
                ticket.finish("disconnect")
                return Response(status_code=499)
            ticket.finish("completed", plan.prompt_tokens, plan.completion_tokens)
            return Response(self.body(plan, cut=False), headers=headers, media_type="application/json")
        finally:
            if not handed_off and not ticket.done:  # cancelled (server shutdown) or an unexpected error
                ticket.finish("disconnect")


class _ChatExchange(_Exchange[_Plan]):
    rejection = _Reject

    async def prepare(self) -> _Plan:
        _check_auth(self.request, self.settings)
        body = await _read_json(self.request)
        self.record(body, body.get("model"), body.get("stream", False))
        return _plan(self.request, body, self.settings)

    def headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_mock{uuid.uuid4().hex[:24]}"}

    def injected(self, fault: FaultSpec, headers: dict[str, str]) -> Response:
        injected = _injected_error(fault)
        injected.headers.update(headers)
        return injected.response()

    def stream(self, plan: _Plan, ticket: _Ticket, headers: dict[str, str]) -> Response:
        return _ChatStream(plan, ticket, {**headers, "cache-control": "no-cache"})

    def body(self, plan: _Plan, *, cut: bool) -> bytes:
        return _dumps(_completion_body(plan))


async def chat_completions(request: Request) -> Response:
    return await _ChatExchange(request).respond()


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": OWNED_BY}


async def list_models(request: Request) -> Response:
    settings: MockSettings = request.app.state.settings
    try:
        _check_auth(request, settings)
    except _Reject as rejection:
        return rejection.response()
    return JSONResponse({"object": "list", "data": [_model_object(m) for m in settings.models]})


async def get_model(request: Request) -> Response:
    try:
        _check_auth(request, request.app.state.settings)
    except _Reject as rejection:
        return rejection.response()
    return JSONResponse(_model_object(split_model(request.path_params["model_id"])[0]))


async def get_stats(request: Request) -> Response:
    return JSONResponse(request.app.state.stats.snapshot())


async def reset_stats(request: Request) -> Response:
    request.app.state.stats.reset()
    return JSONResponse(request.app.state.stats.snapshot())


async def get_requests(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": request.app.state.stats.recent_requests})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else None
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return _Reject(exc.status_code, message, code=code).response()


class _QuietCutFilter(logging.Filter):
    """Drop uvicorn's "Exception in ASGI application" traceback for cuts made on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_cut(record.exc_info[1]))


def _is_cut(exc: BaseException | None) -> bool:
    if isinstance(exc, StreamCut):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cut(e) for e in exc.exceptions)
    return False


_CUT_FILTER = _QuietCutFilter()


def create_app(settings: MockSettings | None = None) -> Starlette:
    """The mock model server as an ASGI app. ``app.state.stats`` is its :class:`MockStats`."""
    settings = settings or MockSettings()
    if not (math.isfinite(settings.token_delay) and 0 <= settings.token_delay <= MAX_TOKEN_DELAY):
        raise ValueError(f"token_delay must be between 0 and {MAX_TOKEN_DELAY:g} seconds")
    if not 0 <= settings.reply_tokens <= MAX_TOKENS:
        raise ValueError(f"reply_tokens must be between 0 and {MAX_TOKENS}")
    parse_fault_spec(settings.default_fault)  # fail at start-up, not on the first request
    vocab.verify_vocabulary()
    logging.getLogger("uvicorn.error").addFilter(_CUT_FILTER)  # idempotent

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
            Route("/mock/stats", get_stats, methods=["GET"]),
            Route("/mock/stats/reset", reset_stats, methods=["POST"]),
            Route("/mock/requests", get_requests, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.settings = settings
    app.state.stats = MockStats(settings.recent_requests)
    from quotagate_tools.mock.anthropic import anthropic_routes  # here: it imports this module

    app.router.routes.extend(anthropic_routes())  # POST /v1/messages (Anthropic Messages API)
    from quotagate_tools.mock.bedrock import bedrock_routes  # here: it imports this module

    app.router.routes.extend(bedrock_routes())  # POST /model/{id}/converse[-stream] (Bedrock Runtime)
    from quotagate_tools.mock.embeddings import embeddings_routes  # here: it imports this module

    app.router.routes.extend(embeddings_routes())  # POST /v1/embeddings (OpenAI)
    return app


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound TCP socket (port 0 = a free port, read it with ``getsockname()``)."""
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on connections of a socket whose proto
    # says TCP; without it, Nagle + delayed ACK add ~40 ms to every keep-alive response.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class MockServer:
    """The mock served by uvicorn on loopback in a daemon thread.

    ::

        with MockServer(MockSettings(token_delay=0.001)) as mock:
            OpenAI(base_url=mock.openai_base_url, api_key="x")...
            assert mock.stats.completed == 1

    ``start()`` returns once the server accepts connections; ``stop()`` is idempotent and bounded.
    Pass ``app=`` to serve an app you already built (for example one whose stats you hold).
    """

    def __init__(
        self,
        settings: MockSettings | None = None,
        *,
        app: Starlette | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 10.0,
    ) -> None:
        self.app = app if app is not None else create_app(settings)
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def stats(self) -> MockStats:
        return self.app.state.stats

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash, no ``/v1``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """``base_url + "/v1"``: what the ``openai`` SDK wants as ``base_url``."""
        return self.base_url + "/v1"

    def start(self) -> MockServer:
        import uvicorn

        if self._thread is not None:
            raise RuntimeError("MockServer already started")
        self._sock = bind_socket(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_config=None,  # leave the host process's logging alone
            access_log=False,
            # "auto": an app with a lifespan (the proxy app keeps its services in lifespan state) gets it.
            lifespan="auto",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)

        def run() -> None:
            try:
                self._server.run(sockets=[self._sock])
            except BaseException as exc:  # reported by start()
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"quotagate-mock-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mock server did not start on {self.base_url}: {self._error!r}")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        if server is not None and thread is not None and thread.is_alive():
            server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()

    def __enter__(self) -> MockServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_in_thread(
    settings: MockSettings | None = None,
    port: int = 0,
    *,
    app: Starlette | None = None,
    host: str = "127.0.0.1",
) -> tuple[str, Callable[[], None]]:
    """Serve the mock on ``host:port`` (0 = a free port) in a background thread.

    Returns ``(base_url, stop)`` once it accepts connections; ``base_url`` is
    ``http://127.0.0.1:<port>`` (append ``/v1`` for OpenAI clients). ``stop()`` is idempotent.
    Pass ``app=create_app(...)`` to keep a handle on ``app.state.stats``.
    """
    server = MockServer(settings, app=app, host=host, port=port).start()
    return server.base_url, server.stop
