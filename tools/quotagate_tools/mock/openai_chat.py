"""OpenAI chat completions and the model list on the mock model server.

``POST /v1/chat/completions`` (stream and non-stream, OpenAI shapes, real cl100k usage numbers; tool
calls and ``response_format`` as :mod:`quotagate_tools.mock.structured` describes), ``GET /v1/models``
and ``GET /v1/models/{id}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from quotagate import tokens
from quotagate_tools.mock import billing, structured, vocab
from quotagate_tools.mock.exchange import Exchange, PlanStream, StreamCut, json_bytes
from quotagate_tools.mock.faults import FAULT_HEADER, FaultSpec, split_model
from quotagate_tools.mock.openai_errors import OpenAIError, check_auth, injected_error, read_json
from quotagate_tools.mock.request_options import is_int, reply_pace, request_fault

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

    from quotagate_tools.mock.settings import MockSettings
    from quotagate_tools.mock.stats import Ticket

logger = logging.getLogger("quotagate_tools.mock")

MODEL_CREATED = 1_700_000_000
OWNED_BY = "quotagate-mock"
SYSTEM_FINGERPRINT = "fp_quotagate_mock"


@dataclass
class ChatPlan:
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
    # What the real providers bill beyond the visible answer (``real_billing``, see mock.billing).
    service_tier: str = "default"  # the tier the answer is served (and billed) in
    reasoning_tokens: int = 0  # hidden, inside the output cap
    rejected_prediction_tokens: int = 0  # billed as output, beyond the cap
    audio: bool = False  # the pieces are an audio answer's transcript
    audio_prompt_tokens: int = 0  # of prompt_tokens
    web_searches: int = 0

    @property
    def audio_tokens(self) -> int:
        return billing.AUDIO_TOKENS_PER_TEXT_TOKEN * len(self.pieces) if self.audio else 0

    @property
    def completion_tokens(self) -> int:
        visible = len(self.pieces) + len(self.tool_pieces)
        return visible + self.audio_tokens + self.reasoning_tokens + self.rejected_prediction_tokens

    @property
    def delay_steps(self) -> int:
        return self.completion_tokens

    def charges(self) -> billing.Charges:
        return billing.Charges(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            audio_prompt_tokens=self.audio_prompt_tokens,
            audio_completion_tokens=self.audio_tokens,
            web_searches=self.web_searches,
            service_tier=self.service_tier,
        )

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": self.audio_prompt_tokens},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": self.audio_tokens,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": self.rejected_prediction_tokens,
            },
        }


def _model(body: dict[str, Any]) -> tuple[str, str | None]:
    """(the model without its fault suffix, the suffix's fault spec)."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise OpenAIError(400, "you must provide a model parameter", param="model")
    base_model, model_fault = split_model(model)
    if not base_model:
        raise OpenAIError(400, "you must provide a model parameter", param="model")
    return base_model, model_fault


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "'messages' must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise OpenAIError(
                400,
                f"Invalid message at messages[{i}]: expected an object with a role.",
                param=f"messages[{i}]",
            )
    return messages


def _streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise OpenAIError(400, "'stream' must be a boolean.", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise OpenAIError(400, "'stream_options' must be an object.", param="stream_options")
    return stream, bool(stream_options.get("include_usage"))


def _token_limit(body: dict[str, Any], fault: FaultSpec) -> int | None:
    """The completion token cap the request sets (the fault's ``cap_field`` says which field counts)."""
    limit = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not is_int(value) or value < 1:
            raise OpenAIError(400, f"'{name}' must be a positive integer.", param=name)
        if fault.cap_field == "max_completion_tokens" and name == "max_tokens":
            # What OpenAI's reasoning models answer.
            raise OpenAIError(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                param="max_tokens",
                code="unsupported_parameter",
            )
        if limit is None and fault.cap_field in (None, "any", name):
            limit = value
    return limit


@dataclass
class _Reply:
    pieces: list[str]
    finish_reason: str = "stop"
    tool_call: dict[str, str] | None = None
    tool_pieces: list[str] = field(default_factory=list)


def _reply(body: dict[str, Any], messages: list[dict[str, Any]], length: int, limit: int | None) -> _Reply:
    """The reply text or tool call (structured output as :mod:`structured` makes it), cut at ``limit``."""
    reply = _Reply(vocab.reply_pieces(messages, length))
    function = structured.chosen_function(body, messages)
    if function is not None:
        reply.pieces, reply.finish_reason = [], "tool_calls"
        reply.tool_call = {"id": f"call_mock{uuid.uuid4().hex[:20]}", "name": function["name"]}
        reply.tool_pieces = structured.json_pieces(structured.arguments_for(function, messages))
    else:
        json_text = structured.structured_text(body, messages, reply.pieces)
        if json_text is not None:
            reply.pieces = structured.json_pieces(json_text)
    if limit is not None and limit < len(reply.pieces) + len(reply.tool_pieces):
        reply.finish_reason = "length"
        reply.pieces = reply.pieces[:limit]
        reply.tool_pieces = reply.tool_pieces[: limit - len(reply.pieces)]
    return reply


@dataclass(frozen=True)
class _Billed:
    """What a request's fields make a provider bill beyond its visible answer (``real_billing``)."""

    service_tier: str = "default"
    reasoning_tokens: int = 0
    rejected_prediction_tokens: int = 0
    audio: bool = False
    audio_prompt_tokens: int = 0
    web_searches: int = 0

    def reply_limit(self, limit: int | None) -> int | None:
        """The visible answer's share of the output cap: reasoning comes first, and every
        transcript token of an audio answer brings its audio tokens."""
        if limit is None:
            return None
        per_piece = 1 + (billing.AUDIO_TOKENS_PER_TEXT_TOKEN if self.audio else 0)
        return max(0, limit - self.reasoning_tokens) // per_piece


def _billed(body: dict[str, Any], fault: FaultSpec, limit: int | None) -> _Billed:
    tier = body.get("service_tier")
    served_tier = tier if tier in ("priority", "flex") else "default"
    if not fault.real_billing:
        return _Billed(served_tier)
    effort = body.get("reasoning_effort")
    reasoning = billing.REASONING_TOKENS.get(effort, 0) if isinstance(effort, str) else 0
    if limit is not None:
        reasoning = min(reasoning, limit)
    prediction = body.get("prediction")
    content = prediction.get("content") if isinstance(prediction, dict) else None
    rejected = 0
    if content is not None:  # the mock's answer never matches it: every predicted token is rejected
        rejected = tokens.count_text(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
    modalities = body.get("modalities")
    return _Billed(
        service_tier=served_tier,
        reasoning_tokens=reasoning,
        rejected_prediction_tokens=rejected,
        audio=isinstance(modalities, list) and "audio" in modalities,
        audio_prompt_tokens=billing.openai_audio_prompt_tokens(body),
        web_searches=1 if body.get("web_search_options") is not None else 0,
    )


def plan_chat(request: Request, body: dict[str, Any], settings: MockSettings) -> ChatPlan:
    """Validate a chat completions request (400 :class:`OpenAIError`) and decide its reply."""
    base_model, model_fault = _model(body)
    messages = _messages(body)
    stream, include_usage = _streaming(body)
    fault = request_fault(settings, model_fault, request.headers.get(FAULT_HEADER), body)
    limit = _token_limit(body, fault)
    length, token_delay = reply_pace(
        body, settings, fault, lambda field, problem: OpenAIError(400, f"'{field}' {problem}.", param=field)
    )
    billed = _billed(body, fault, limit)
    reply = _reply(body, messages, length, billed.reply_limit(limit))
    return ChatPlan(
        model=base_model,
        messages=messages,
        stream=stream,
        include_usage=include_usage,
        pieces=reply.pieces,
        finish_reason=reply.finish_reason,
        prompt_tokens=billing.openai_prompt_tokens(body) if fault.real_billing else tokens.chat_prompt_tokens(messages),
        token_delay=token_delay,
        fault=fault,
        tool_call=reply.tool_call,
        tool_pieces=reply.tool_pieces,
        service_tier=billed.service_tier,
        reasoning_tokens=billed.reasoning_tokens,
        rejected_prediction_tokens=billed.rejected_prediction_tokens,
        audio=billed.audio,
        audio_prompt_tokens=billed.audio_prompt_tokens,
        web_searches=billed.web_searches,
    )


AUDIO_ID = "audio_mock"


def audio_part(pieces: list[str]) -> dict[str, Any]:
    """An audio answer's (streamed) part: silence standing for the speech, and its transcript."""
    speech = bytes(2 * billing.AUDIO_TOKENS_PER_TEXT_TOKEN * len(pieces))
    return {"id": AUDIO_ID, "data": base64.b64encode(speech).decode(), "transcript": "".join(pieces)}


def new_ids() -> tuple[str, int]:
    return f"chatcmpl-mock{uuid.uuid4().hex[:24]}", int(time.time())


def completion_body(plan: ChatPlan) -> dict[str, Any]:
    completion_id, created = new_ids()
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": plan.model,
        "choices": [
            {
                "index": 0,
                "message": reply_message(plan),
                "logprobs": None,
                "finish_reason": plan.finish_reason,
            }
        ],
        "service_tier": plan.service_tier,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if not plan.fault.omit_usage:
        body["usage"] = plan.usage()
    return body


def reply_message(plan: ChatPlan) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(plan.pieces) if plan.pieces or plan.tool_call is None else None,
        "refusal": None,
        "annotations": [],
    }
    if plan.audio:
        message["content"] = None
        message["audio"] = {**audio_part(plan.pieces), "expires_at": int(time.time()) + 3600}
    if plan.tool_call is not None:
        message["tool_calls"] = [
            {
                "id": plan.tool_call["id"],
                "type": "function",
                "function": {"name": plan.tool_call["name"], "arguments": "".join(plan.tool_pieces)},
            }
        ]
    return message


class ChatStream(PlanStream[ChatPlan]):
    """SSE chat.completion.chunk stream."""

    async def _events(self) -> AsyncIterator[bytes]:
        plan = self._plan
        usage_field = plan.include_usage and not plan.fault.omit_usage
        completion_id, created = new_ids()
        head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": plan.model,
            "service_tier": plan.service_tier,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

        def event(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            chunk = {**head, "choices": [choice]}
            if usage_field:
                chunk["usage"] = None
            return b"data: " + json_bytes(chunk) + b"\n\n"

        yield event({"role": "assistant", "content": "", "refusal": None})
        drop_after = plan.fault.drop_after
        for i, piece in enumerate(plan.pieces):
            if drop_after is not None and i >= drop_after:
                break
            await asyncio.sleep(plan.token_delay)
            yield event({"audio": audio_part([piece])} if plan.audio else {"content": piece})
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
            yield b"data: " + json_bytes({**head, "choices": [], "usage": plan.usage()}) + b"\n\n"
        yield b"data: [DONE]\n\n"
        self._outcome = "completed"


class ChatExchange(Exchange[ChatPlan]):
    rejection = OpenAIError

    async def prepare(self) -> ChatPlan:
        check_auth(self.request, self.settings)
        body = await read_json(self.request)
        self.record(body, body.get("model"), body.get("stream", False))
        return plan_chat(self.request, body, self.settings)

    def headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_mock{uuid.uuid4().hex[:24]}"}

    def injected(self, fault: FaultSpec, headers: dict[str, str]) -> Response:
        injected = injected_error(fault)
        injected.headers.update(headers)
        return injected.response()

    def stream(self, plan: ChatPlan, ticket: Ticket, headers: dict[str, str]) -> Response:
        return ChatStream(plan, ticket, {**headers, "cache-control": "no-cache"})

    def body(self, plan: ChatPlan, *, cut: bool) -> bytes:
        return json_bytes(completion_body(plan))


async def chat_completions(request: Request) -> Response:
    return await ChatExchange(request).respond()


def model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": OWNED_BY}


async def list_models(request: Request) -> Response:
    settings: MockSettings = request.app.state.settings
    try:
        check_auth(request, settings)
    except OpenAIError as rejection:
        return rejection.response()
    return JSONResponse({"object": "list", "data": [model_object(m) for m in settings.models]})


async def get_model(request: Request) -> Response:
    try:
        check_auth(request, request.app.state.settings)
    except OpenAIError as rejection:
        return rejection.response()
    return JSONResponse(model_object(split_model(request.path_params["model_id"])[0]))


def openai_routes() -> list[BaseRoute]:
    """Chat completions and the model list; handlers use ``request.app.state.settings`` / ``.stats``."""
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
    ]
