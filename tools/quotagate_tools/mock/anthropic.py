"""Anthropic Messages API on the mock model server.

``anthropic_routes()`` returns the routes that :func:`quotagate_tools.mock.server.create_app` mounts:

- ``POST /v1/messages`` (and ``/messages``): non-stream and ``"stream": true`` SSE with the event
  sequence Anthropic sends (``message_start``, ``content_block_start``, ``ping``,
  ``content_block_delta`` (``text_delta`` / ``input_json_delta``), ``content_block_stop``,
  ``message_delta`` with the stop reason and the CUMULATIVE ``usage.output_tokens``,
  ``message_stop``);
- ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}`` with the same count.

Headers: ``anthropic-version`` is required (``2023-06-01`` or ``2023-01-01``, like the real API a
missing or unknown one is a 400); when ``MockSettings.api_key`` is set, ``x-api-key`` must carry it
(401 ``authentication_error`` otherwise; ``Authorization: Bearer`` is NOT accepted, as for
Anthropic API keys). Errors are Anthropic-shaped:
``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}``.

Replies are the deterministic vocabulary replies of :mod:`quotagate_tools.mock.vocab`, seeded by the
"conversation" = ``[{"role": "system", "content": system}]`` (when a system prompt is given)
followed by the request's ``messages`` as sent. Usage numbers:

- ``input_tokens`` = ``tokens.chat_prompt_tokens(conversation)``, i.e. OpenAI's cl100k chat
  framing: 3 reply-priming tokens + for every message 3 + tokens(role) + tokens(content text),
  where a content given as blocks counts the ``text`` of text blocks (joined with newlines) and
  every other block (image, tool_use, tool_result...) as its compact JSON. Tool definitions are not
  counted (nor are they by the OpenAI mock).
- ``output_tokens`` = the number of text pieces sent (each vocabulary piece is one cl100k token; a
  piece cut short by a stop sequence still counts one) + ``tokens.count_text(json)`` of every
  ``tool_use`` input. ``message_start`` reports ``output_tokens: 1`` (0 for an empty reply), as
  Anthropic does; ``message_delta`` reports the total.

Stop reasons: ``end_turn``; ``max_tokens`` when ``max_tokens`` cuts the reply; ``stop_sequence``
when one of ``stop_sequences`` occurs in the reply text (the text stops before it, and
``stop_sequence`` names it); ``tool_use`` when a tool is called.

Tools: with ``tools`` and ``tool_choice`` ``{"type": "any"}`` / ``{"type": "tool", "name": N}``
the reply is one ``tool_use`` block (of tool N, or of the first tool the last user turn names, else
the first tool: :func:`quotagate_tools.mock.structured.tool_asked_for`); with ``{"type": "auto"}``
(the default when tools are given) the reply is the text reply followed by a ``tool_use`` of that
tool -- unless the last user turn carries a ``tool_result``, in which case it is text only,
like a model that got its answer; ``{"type": "none"}`` is text only. The tool input is made
deterministically from the tool's ``input_schema`` properties (an input schema without properties,
such as the gateway's ``json_object`` tool, gets the object the prompt describes, if it describes
one: :func:`quotagate_tools.mock.structured.described_object`). If ``max_tokens`` leaves no room for
the tool call, the call is left out and the stop reason is ``max_tokens``.

Structured output: with ``output_config.format`` (or the beta's top-level ``output_format``)
``{"type": "json_schema", "schema": ...}``, the text block is JSON the schema accepts
(:func:`quotagate_tools.mock.structured.value_for_schema`), cut at ``max_tokens`` like any text; a
format of another type or without a schema object is a 400.

Extended thinking: with ``thinking`` ``enabled`` (``budget_tokens`` of at least 1,024 and below
``max_tokens``, as Anthropic requires) or ``adaptive``, the reply opens with a ``thinking`` block of
``THINKING_TOKENS`` vocabulary pieces (counted in ``output_tokens`` and within ``max_tokens``) and a
``signature`` (:func:`thinking_signature`, a hash of the thinking text); streamed as
``thinking_delta`` events then one ``signature_delta``. A ``thinking`` block sent back in an
assistant turn must carry its signature (400 otherwise), so a client or gateway that alters one is
caught.

Prompt caching: the request up to its last ``cache_control`` breakpoint (tools, system, messages in
that order; a top-level ``cache_control`` marks the whole prompt) is the cached prefix. Its tokens
(the same formula over the prefix alone) are billed as ``cache_creation_input_tokens`` the first time
and as ``cache_read_input_tokens`` while the entry lives (5 minutes, or 1 hour with ``ttl: "1h"``;
per mock app, keyed by model, ttl and the prefix); ``input_tokens`` is the rest.

Faults: the same specs and sources as the OpenAI endpoint (:mod:`quotagate_tools.mock.faults`: the model
suffix ``@...``, the ``x-mock-fault`` header, the ``mock_fault`` body field, plus
``mock_reply_tokens`` / ``mock_token_delay``). ``status=N`` answers an Anthropic-shaped error
(``code=S`` overrides the error ``type``; 429/503/529 carry ``retry-after``); ``drop_after=N`` cuts
the stream after ``message_start``, the first ``content_block_start``, ``ping`` and N deltas;
``omit_usage`` leaves the ``usage`` objects out of ``message_start``, ``message_delta`` and the
non-stream body. The shared :class:`~quotagate_tools.mock.stats.MockStats` counters are updated exactly
as for chat completions (``chat_requests`` counts POSTs to ``/v1/messages``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
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
from quotagate_tools.mock.exchange import Exchange, PlanStream, Rejection, StreamCut, json_bytes
from quotagate_tools.mock.faults import FAULT_HEADER, MAX_TOKENS, FaultSpec, split_model
from quotagate_tools.mock.openai_errors import OpenAIError, read_json
from quotagate_tools.mock.request_options import is_int, reply_pace, request_fault

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

    from quotagate_tools.mock.settings import MockSettings
    from quotagate_tools.mock.stats import Ticket

logger = logging.getLogger("quotagate_tools.mock")

ANTHROPIC_VERSIONS: tuple[str, ...] = ("2023-06-01", "2023-01-01")
VERSION_HEADER = "anthropic-version"
API_KEY_HEADER = "x-api-key"
TOOL_JSON_CHUNK_CHARS = 12  # size of the input_json_delta pieces of a streamed tool call
THINKING_TOKENS = 8  # the length of the mock's thinking, in tokens (one vocabulary piece each)
MIN_THINKING_BUDGET = 1024
CACHE_SECONDS = {"5m": 300.0, "1h": 3600.0}
SIGNATURE_DOMAIN = b"quotagate-mock-thinking-v1"

_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ERROR_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request (injected by the mock).",
    "authentication_error": "invalid x-api-key (injected by the mock)",
    "billing_error": "Your credit balance is too low (injected by the mock).",
    "permission_error": "Your API key may not use the specified resource (injected by the mock).",
    "not_found_error": "The requested resource was not found (injected by the mock).",
    "request_too_large": "Request exceeds the maximum allowed number of bytes (injected by the mock).",
    "rate_limit_error": "Number of requests has exceeded your rate limit (injected by the mock).",
    "api_error": "Internal server error (injected by the mock).",
    "timeout_error": "Request timed out (injected by the mock).",
    "overloaded_error": "Overloaded (injected by the mock).",
}
_RETRY_AFTER_STATUSES = (429, 503, 529)
_ROLES = ("user", "assistant")
_TOOL_CHOICES = ("auto", "any", "tool", "none")


def error_type_for(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


class _AnthropicReject(Rejection):
    def __init__(
        self, status: int, message: str, type_: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or error_type_for(status)
        self.headers = headers or {}

    @classmethod
    def from_reject(cls, rejection: OpenAIError) -> _AnthropicReject:
        return cls(rejection.status, rejection.message, headers=rejection.headers)

    def response(self) -> JSONResponse:
        body = {
            "type": "error",
            "error": {"type": self.type, "message": self.message},
            "request_id": _request_id(),
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _request_id() -> str:
    return f"req_mock{uuid.uuid4().hex[:24]}"


def _bad(message: str) -> _AnthropicReject:
    return _AnthropicReject(400, message, "invalid_request_error")


def _injected(fault: FaultSpec) -> _AnthropicReject:
    assert fault.status is not None
    type_ = fault.code or error_type_for(fault.status)
    message = _ERROR_MESSAGES.get(type_, f"Error {fault.status} (injected by the mock).")
    headers = {}
    if fault.status in _RETRY_AFTER_STATUSES:
        retry_after = fault.retry_after if fault.retry_after is not None else 1
        headers["retry-after"] = f"{retry_after:g}"
    return _AnthropicReject(fault.status, message, type_, headers)


# ---------------------------------------------------------------------------------------------
# The plan of a reply
# ---------------------------------------------------------------------------------------------


def thinking_signature(thinking: str) -> str:
    """The signature the mock gives a thinking block (and checks when the block comes back)."""
    return base64.b64encode(hashlib.sha256(SIGNATURE_DOMAIN + thinking.encode()).digest()).decode()


@dataclass
class _Block:
    type: str  # "text" | "tool_use" | "thinking"
    pieces: list[str] = field(default_factory=list)  # text or thinking pieces (one token each)
    tool_id: str = ""
    name: str = ""
    input: dict[str, Any] = field(default_factory=dict)

    @property
    def input_json(self) -> str:
        return json.dumps(self.input, separators=(",", ":"), ensure_ascii=False)

    @property
    def output_tokens(self) -> int:
        return tokens.count_text(self.input_json) if self.type == "tool_use" else len(self.pieces)

    def content(self) -> dict[str, Any]:
        if self.type == "text":
            return {"type": "text", "text": "".join(self.pieces)}
        if self.type == "thinking":
            thought = "".join(self.pieces)
            return {"type": "thinking", "thinking": thought, "signature": thinking_signature(thought)}
        return {"type": "tool_use", "id": self.tool_id, "name": self.name, "input": self.input}

    def start(self) -> dict[str, Any]:
        """The block as ``content_block_start`` announces it (empty; deltas fill it)."""
        if self.type == "text":
            return {"type": "text", "text": ""}
        if self.type == "thinking":
            return {"type": "thinking", "thinking": "", "signature": ""}
        return {"type": "tool_use", "id": self.tool_id, "name": self.name, "input": {}}

    def deltas(self) -> list[dict[str, Any]]:
        if self.type == "text":
            return [{"type": "text_delta", "text": piece} for piece in self.pieces]
        if self.type == "thinking":
            thought = "".join(self.pieces)
            signature = {"type": "signature_delta", "signature": thinking_signature(thought)}
            return [*({"type": "thinking_delta", "thinking": piece} for piece in self.pieces), signature]
        raw = self.input_json
        chunks = [raw[i : i + TOOL_JSON_CHUNK_CHARS] for i in range(0, len(raw), TOOL_JSON_CHUNK_CHARS)]
        # Anthropic starts a tool call's input with an empty partial_json.
        return [{"type": "input_json_delta", "partial_json": chunk} for chunk in ["", *chunks]]


@dataclass
class _MessagesPlan:
    model: str
    stream: bool
    blocks: list[_Block]
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    token_delay: float
    fault: FaultSpec
    cache_creation_tokens: int = 0  # the cache_control prefix, written to the prompt cache
    cache_read_tokens: int = 0  # the cache_control prefix, read from the prompt cache
    cache_ttl: str = "5m"
    inference_geo: str | None = None  # as asked: billed at its multiplier
    fast: bool = False  # ``speed: "fast"``: billed at the fast-mode multiplier

    # Read by the shared stream/ticket accounting (same names as the chat plan).
    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_tokens + self.cache_read_tokens

    @property
    def completion_tokens(self) -> int:
        return sum(block.output_tokens for block in self.blocks)

    @property
    def delay_steps(self) -> int:
        return self.completion_tokens

    def charges(self) -> billing.Charges:
        return billing.Charges(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cache_write_tokens=self.cache_creation_tokens,
            cache_write_1h=self.cache_ttl == "1h",
            cache_read_tokens=self.cache_read_tokens,
            service_tier="standard",
            inference_geo=self.inference_geo,
            fast=self.fast,
        )

    def usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_tokens if self.cache_ttl != "1h" else 0,
                "ephemeral_1h_input_tokens": self.cache_creation_tokens if self.cache_ttl == "1h" else 0,
            },
            "output_tokens": self.completion_tokens,
            "service_tier": "standard",
        }


def conversation(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages a reply and its input tokens are computed from: the system prompt (if any) as
    a leading ``system`` message, then the request's messages."""
    system = body.get("system")
    messages = list(body.get("messages") or [])
    if system:
        return [{"role": "system", "content": system}, *messages]
    return messages


def input_tokens_of(body: dict[str, Any]) -> int:
    return tokens.chat_prompt_tokens(conversation(body))


def _check_headers(request: Request, settings: MockSettings) -> None:
    if settings.api_key:
        presented = request.headers.get(API_KEY_HEADER, "")
        if not presented or not hmac.compare_digest(presented.strip().encode(), settings.api_key.encode()):
            raise _AnthropicReject(401, "invalid x-api-key", "authentication_error")
    version = request.headers.get(VERSION_HEADER)
    if not version:
        raise _bad(f"{VERSION_HEADER}: header is required")
    if version not in ANTHROPIC_VERSIONS:
        raise _bad(f"{VERSION_HEADER}: invalid version {version!r}")


def _validate_content(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(f"{where}: Input should be a valid string or list")
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(f"{where}.{i}: each content block must be an object with a type")
        if block["type"] == "text" and not (isinstance(block.get("text"), str) and block["text"]):
            raise _bad(f"{where}.{i}: text content blocks must be non-empty")


def _validate(body: dict[str, Any]) -> None:
    """The request checks Anthropic makes that matter here (400 ``invalid_request_error``)."""
    _validate_model(body)
    _validate_messages(body)
    _validate_options(body)
    _validate_tools(body)
    _validate_sampling(body)


def _validate_model(body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not split_model(model)[0].strip():
        raise _bad("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _bad("max_tokens: Field required")
    if not is_int(max_tokens) or max_tokens < 1:
        raise _bad("max_tokens: Input should be a positive integer")


def _validate_messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        _validate_content(message.get("content"), f"messages.{i}.content")
    system = body.get("system")
    if system is not None:
        _validate_content(system, "system")


def _validate_options(body: dict[str, Any]) -> None:
    """stop_sequences and stream."""
    stop_sequences = body.get("stop_sequences")
    if stop_sequences is not None and (
        not isinstance(stop_sequences, list) or not all(isinstance(s, str) and s.strip() for s in stop_sequences)
    ):
        raise _bad("stop_sequences: each stop sequence must be a string containing non-whitespace")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream: Input should be a valid boolean")


def _validate_sampling(body: dict[str, Any]) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1):
            raise _bad(f"{name}: Input should be a number from 0 to 1")


def _validate_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("input_schema"), dict)
            for t in tools
        ):
            raise _bad("tools: each tool needs a name and an input_schema object")
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        if not isinstance(tool_choice, dict) or tool_choice.get("type") not in _TOOL_CHOICES:
            raise _bad("tool_choice: Input tag does not match any of 'auto', 'any', 'tool', 'none'")
        if tool_choice["type"] == "tool":
            names = [t["name"] for t in tools or []]
            if tool_choice.get("name") not in names:
                raise _bad(f"tool_choice: tool {tool_choice.get('name')!r} not found in tools")


def _validate_thinking(body: dict[str, Any]) -> int:
    """The thinking tokens the reply starts with (0 without ``thinking``); Anthropic's checks: an
    ``enabled`` budget of at least 1,024 tokens and below ``max_tokens``, and every thinking block
    sent back carrying the signature it was given (the mock's signatures are a hash of the text)."""
    for i, message in enumerate(body["messages"]):
        content = message.get("content")
        for j, block in enumerate(content if isinstance(content, list) else []):
            if block.get("type") == "thinking" and block.get("signature") != thinking_signature(
                str(block.get("thinking"))
            ):
                raise _bad(f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block")
            if block.get("type") == "redacted_thinking" and not isinstance(block.get("data"), str):
                raise _bad(f"messages.{i}.content.{j}.data: Field required")
    thinking = body.get("thinking")
    if thinking is None or (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        return 0
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive"):
        raise _bad("thinking.type: Input should be 'enabled', 'adaptive' or 'disabled'")
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_THINKING_BUDGET:
            raise _bad(f"thinking.enabled.budget_tokens: Input should be at least {MIN_THINKING_BUDGET}")
        if budget >= body["max_tokens"]:
            raise _bad("max_tokens: must be greater than thinking.budget_tokens")
    return THINKING_TOKENS


def _last_marked(blocks: Any) -> int | None:
    """The index of the last block of a list that carries ``cache_control``."""
    if not isinstance(blocks, list):
        return None
    marked = [i for i, block in enumerate(blocks) if isinstance(block, dict) and "cache_control" in block]
    return marked[-1] if marked else None


def _cache_prefix(body: dict[str, Any]) -> dict[str, Any] | None:
    """The part of the request up to and including its last ``cache_control`` breakpoint (tools,
    then system, then messages, as Anthropic orders a prompt); a top-level ``cache_control`` marks
    the whole prompt. None without a breakpoint."""
    if isinstance(body.get("cache_control"), dict):
        return {k: body.get(k) for k in ("tools", "system", "messages")}
    messages = body.get("messages") or []
    for i in range(len(messages) - 1, -1, -1):
        content = messages[i].get("content")
        j = _last_marked(content)
        if j is not None:
            kept = [*messages[:i], {**messages[i], "content": content[: j + 1]}]
            return {"tools": body.get("tools"), "system": body.get("system"), "messages": kept}
    system: Any = body.get("system")
    j = _last_marked(system)
    if j is not None:
        return {"tools": body.get("tools"), "system": system[: j + 1], "messages": []}
    tools: Any = body.get("tools")
    j = _last_marked(tools)
    if j is not None:
        return {"tools": tools[: j + 1], "messages": []}
    return None


@dataclass
class _CacheUse:
    written: int = 0
    read: int = 0
    ttl: str = "5m"


def _prompt_cache(request: Request, body: dict[str, Any], total: int, count: Any) -> _CacheUse:
    """Prompt caching as Anthropic bills it: the marked prefix is written the first time (and kept
    for its ttl, per mock app, keyed by model, ttl and the prefix itself) and read afterwards."""
    prefix = _cache_prefix(body)
    if prefix is None:
        return _CacheUse()
    ttls = billing.cache_control_ttls(body)
    ttl = "1h" if "1h" in ttls else "5m"
    tokens_of_prefix = min(count(prefix), total)
    state = request.app.state
    store: dict[str, float] = getattr(state, "anthropic_prompt_cache", None) or {}
    state.anthropic_prompt_cache = store
    key = hashlib.sha256(json_bytes([split_model(body["model"])[0], ttl, prefix])).hexdigest()
    now = time.monotonic()
    hit = store.get(key, 0.0) > now
    store[key] = now + CACHE_SECONDS[ttl]
    if hit:
        return _CacheUse(read=tokens_of_prefix, ttl=ttl)
    return _CacheUse(written=tokens_of_prefix, ttl=ttl)


def _fault(request: Request, body: dict[str, Any], settings: MockSettings) -> FaultSpec:
    try:
        return request_fault(settings, split_model(body["model"])[1], request.headers.get(FAULT_HEADER), body)
    except OpenAIError as rejection:
        raise _AnthropicReject.from_reject(rejection) from None


def _output_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of ``output_config.format`` (or the beta's top-level ``output_format``), as the
    real API takes it: ``{"type": "json_schema", "schema": {...}}``; None without one."""
    output_config = body.get("output_config")
    spec = output_config.get("format") if isinstance(output_config, dict) else None
    where = "output_config.format"
    if spec is None and body.get("output_format") is not None:
        spec, where = body["output_format"], "output_format"
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") != "json_schema":
        raise _bad(f"{where}.type: Input should be 'json_schema'")
    if not isinstance(spec.get("schema"), dict):
        raise _bad(f"{where}.schema: Input should be a valid dictionary")
    return spec["schema"]


def _last_user_has_tool_result(messages: list[dict[str, Any]]) -> bool:
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        return isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)
    return False


def _value_for(schema: Any, seed: int) -> Any:
    """A deterministic value of the JSON-schema type ``schema`` names."""
    if not isinstance(schema, dict):
        return vocab.WORDS[seed % len(vocab.WORDS)]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    kind = schema.get("type")
    if kind == "integer":
        return seed
    if kind == "number":
        return seed / 4
    if kind == "boolean":
        return seed % 2 == 0
    if kind == "array":
        return [_value_for(schema.get("items"), seed)]
    if kind == "object":
        return _tool_input(schema, bytes([seed]))
    return vocab.WORDS[seed % len(vocab.WORDS)]


def _tool_input(schema: dict[str, Any], digest: bytes) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {name: _value_for(prop, digest[i % len(digest)]) for i, (name, prop) in enumerate(properties.items())}


def _tool_block(tool: dict[str, Any], digest: bytes, convo: list[dict[str, Any]]) -> _Block:
    schema = tool.get("input_schema") or {}
    # An open object (the gateway's json_object tool): filled as the prompt describes, like a model.
    described = None if schema.get("properties") else structured.described_object(convo)
    return _Block(
        "tool_use",
        tool_id=f"toolu_mock{uuid.uuid4().hex[:20]}",
        name=tool["name"],
        input=described if described is not None else _tool_input(schema, digest),
    )


def _cut_at_stop_sequence(pieces: list[str], stop_sequences: list[str]) -> tuple[list[str], str] | None:
    """The pieces before the earliest stop sequence in the reply text, and that sequence."""
    text = "".join(pieces)
    found: tuple[int, str] | None = None
    for sequence in stop_sequences:
        index = text.find(sequence)
        if index != -1 and (found is None or index < found[0]):
            found = (index, sequence)
    if found is None:
        return None
    index, sequence = found
    return vocab.pieces_before(pieces, index), sequence


def _plan(request: Request, body: dict[str, Any], settings: MockSettings) -> _MessagesPlan:
    _validate(body)
    thinking_tokens = _validate_thinking(body)
    fault = _fault(request, body, settings)
    length, token_delay = reply_pace(body, settings, fault, lambda field, problem: _bad(f"{field}: {problem}"))
    limit: int = MAX_TOKENS if fault.cap_field == "none" else body["max_tokens"]
    convo = conversation(body)
    messages: list[dict[str, Any]] = body["messages"]

    tools: list[dict[str, Any]] = body.get("tools") or []
    choice: dict[str, Any] = body.get("tool_choice") or {"type": "auto"}
    tool: dict[str, Any] | None = None
    with_text = True
    asked = tools[structured.tool_asked_for([t["name"] for t in tools], messages)] if tools else None
    if tools and choice["type"] in ("any", "tool"):
        tool = next((t for t in tools if choice["type"] == "tool" and t["name"] == choice.get("name")), asked)
        with_text = False
    elif tools and choice["type"] == "auto" and not _last_user_has_tool_result(messages):
        tool = asked

    digest = vocab.messages_digest(convo)
    blocks: list[_Block] = []
    stop_reason, stop_sequence = "end_turn", None
    thought = vocab.reply_pieces([*convo, {"role": "assistant", "content": "(thinking)"}], thinking_tokens)
    if thought:  # thinking comes first and counts within max_tokens
        blocks.append(_Block("thinking", thought[:limit]))
        limit -= len(blocks[0].pieces)
        if limit <= 0:
            with_text, tool, stop_reason = False, None, "max_tokens"
    if with_text:
        schema = _output_schema(body)
        if schema is None:
            pieces = vocab.reply_pieces(convo, length)
        else:  # structured output: the text is JSON the schema accepts, whatever the reply length
            pieces = structured.json_pieces(json.dumps(structured.value_for_schema(schema, digest[0])))
        cut = _cut_at_stop_sequence(pieces, body.get("stop_sequences") or [])
        if cut is not None and len(cut[0]) <= limit:
            pieces, stop_sequence = cut
            stop_reason, tool = "stop_sequence", None
        elif len(pieces) > limit:
            pieces = pieces[:limit]
            stop_reason, tool = "max_tokens", None
        if pieces:
            blocks.append(_Block("text", pieces))
    if tool is not None:
        block = _tool_block(tool, digest, convo)
        if sum(b.output_tokens for b in blocks if b.type != "thinking") + block.output_tokens <= limit:
            blocks.append(block)
            stop_reason = "tool_use"
        else:
            stop_reason = "max_tokens"

    def count(request_body: dict[str, Any]) -> int:
        if fault.real_billing:
            return billing.anthropic_input_tokens(request_body)
        return tokens.chat_prompt_tokens(conversation(request_body))

    input_tokens = count(body)
    cache = _prompt_cache(request, body, input_tokens, count)
    return _MessagesPlan(
        model=split_model(body["model"])[0],
        stream=bool(body.get("stream")),
        blocks=blocks,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        input_tokens=input_tokens - cache.written - cache.read,
        token_delay=token_delay,
        fault=fault,
        cache_creation_tokens=cache.written,
        cache_read_tokens=cache.read,
        cache_ttl=cache.ttl,
        inference_geo=body["inference_geo"] if isinstance(body.get("inference_geo"), str) else None,
        fast=body.get("speed") == "fast",
    )


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


def _message_id() -> str:
    return f"msg_mock{uuid.uuid4().hex[:24]}"


def _message_body(plan: _MessagesPlan) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": _message_id(),
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": [block.content() for block in plan.blocks],
        "stop_reason": plan.stop_reason,
        "stop_sequence": plan.stop_sequence,
    }
    if not plan.fault.omit_usage:
        body["usage"] = plan.usage()
    return body


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + json_bytes(event) + b"\n\n"


class _MessagesStream(PlanStream[_MessagesPlan]):
    """Anthropic SSE events."""

    async def _events(self) -> AsyncIterator[bytes]:
        plan = self._plan
        with_usage = not plan.fault.omit_usage
        total_output = plan.completion_tokens
        message: dict[str, Any] = {
            "id": _message_id(),
            "type": "message",
            "role": "assistant",
            "model": plan.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if with_usage:
            message["usage"] = {**plan.usage(), "output_tokens": min(1, total_output)}
        yield _sse({"type": "message_start", "message": message})

        drop_after = plan.fault.drop_after
        sent = 0
        pinged = False
        for index, block in enumerate(plan.blocks):
            yield _sse({"type": "content_block_start", "index": index, "content_block": block.start()})
            if not pinged:
                pinged = True
                yield _sse({"type": "ping"})
            for delta in block.deltas():
                if drop_after is not None and sent >= drop_after:
                    break
                await asyncio.sleep(plan.token_delay)
                yield _sse({"type": "content_block_delta", "index": index, "delta": delta})
                sent += 1
            else:
                yield _sse({"type": "content_block_stop", "index": index})
                continue
            break
        if not pinged:
            yield _sse({"type": "ping"})
        if drop_after is not None:
            self._outcome = "cut"
            logger.info("mock: cutting an Anthropic stream on purpose after %d deltas", sent)
            raise StreamCut("mock drop_after: stream cut on purpose")
        delta_event: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": plan.stop_reason, "stop_sequence": plan.stop_sequence},
        }
        if with_usage:
            delta_event["usage"] = {"output_tokens": total_output}
        yield _sse(delta_event)
        yield _sse({"type": "message_stop"})
        self._outcome = "completed"


async def _read_body(request: Request, settings: MockSettings) -> dict[str, Any]:
    """The JSON body of a request with valid Anthropic headers."""
    _check_headers(request, settings)
    try:
        return await read_json(request)
    except OpenAIError as rejection:
        raise _AnthropicReject.from_reject(rejection) from None


class _MessagesExchange(Exchange[_MessagesPlan]):
    rejection = _AnthropicReject

    async def prepare(self) -> _MessagesPlan:
        body = await _read_body(self.request, self.settings)
        self.record(body, body.get("model"), body.get("stream", False))
        return _plan(self.request, body, self.settings)

    def headers(self) -> dict[str, str]:
        return {"request-id": _request_id()}

    def injected(self, fault: FaultSpec, headers: dict[str, str]) -> Response:
        injected = _injected(fault)
        injected.headers.update(headers)
        return injected.response()

    def stream(self, plan: _MessagesPlan, ticket: Ticket, headers: dict[str, str]) -> Response:
        return _MessagesStream(plan, ticket, {**headers, "cache-control": "no-cache"})

    def body(self, plan: _MessagesPlan, *, cut: bool) -> bytes:
        return json_bytes(_message_body(plan))


async def messages(request: Request) -> Response:
    return await _MessagesExchange(request).respond()


async def count_tokens(request: Request) -> Response:
    settings: MockSettings = request.app.state.settings
    try:
        body = await _read_body(request, settings)
        body = {**body, "max_tokens": body.get("max_tokens", 1)}
        _validate(body)
    except _AnthropicReject as rejection:
        return rejection.response()
    return JSONResponse({"input_tokens": input_tokens_of(body)})


def anthropic_routes() -> list[BaseRoute]:
    """The Anthropic Messages routes; handlers use ``request.app.state.settings`` / ``.stats``."""
    return [
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
    ]
