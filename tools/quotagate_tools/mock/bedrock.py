"""Amazon Bedrock Runtime on the mock model server: Converse and ConverseStream.

Routes (see :func:`bedrock_routes`)::

    POST /model/{modelId}/converse          JSON in, JSON out
    POST /model/{modelId}/converse-stream   JSON in, application/vnd.amazon.eventstream out

so that ``boto3.client("bedrock-runtime", endpoint_url=<mock base_url>, region_name=...)``
``.converse()`` / ``.converse_stream()`` work against the mock unchanged (boto3 percent-encodes the
model id in the path: ``anthropic.claude-3-haiku-20240307-v1:0`` arrives as ``...v1%3A0``; the
id is read from the raw path). Requests are not authenticated (SigV4 is not checked).

Replies are deterministic, like the OpenAI routes': the *prompt view* of a request (below) picks
the words through :func:`quotagate_tools.mock.vocab.reply_pieces`, one cl100k token per piece.

**Prompt view and token counts.** The request is seen as OpenAI-style chat messages: one
``system`` message holding the system text blocks joined by newlines (if any), then one message per
Converse message with its blocks' text joined by newlines (a ``text`` block is its text, an
image/document/video/audio block is ``[image]``/``[document]``/..., a ``toolResult`` block is the
text of its text items and the compact JSON of its json items, any other block (``toolUse``...)
its compact sorted JSON). Then::

    inputTokens  = tokens.chat_prompt_tokens(view)
                   + tokens.count_text(compact sorted JSON of toolConfig.tools)   (if tools are given)
    outputTokens = text reply: the number of pieces generated (up to maxTokens; with a stop
                   sequence, up to and including the piece that completed it — the text returned
                   ends before the stop sequence, as Bedrock does)
                   tool call: preface pieces + tokens.count_text(compact JSON of the tool input)
    totalTokens  = inputTokens + outputTokens

**Tool calls.** When ``toolConfig.tools`` is given and the last message carries no ``toolResult``,
the mock "calls" a tool: the one named by ``toolChoice.tool`` or else the first one, after a short
text preface (:data:`TOOL_PREFACE_TOKENS` pieces), with an input made from the tool's JSON schema
(required properties, or all: strings get a reply word or the first enum value, integers 42,
numbers 1.5, booleans true, arrays of one such item, objects {}; a schema without properties, such
as the gateway's ``json_object`` tool, gets the object the prompt describes, if it describes one:
:func:`quotagate_tools.mock.structured.described_object`), and ``stopReason`` ``tool_use``. If
``maxTokens`` is too small for the whole call, only the (truncated) preface is returned with
``max_tokens``. After a ``toolResult`` the mock answers with text.

**Stream events**: ``messageStart``; per text piece a ``contentBlockDelta`` (``delta.text``) at
block 0; ``contentBlockStop``; for a tool call ``contentBlockStart`` (``start.toolUse``),
``contentBlockDelta`` (``delta.toolUse.input`` fragments), ``contentBlockStop`` at block 1;
``messageStop`` (``stopReason``); ``metadata`` (``usage``, ``metrics.latencyMs``). One event per
frame, each text piece / input fragment after the token delay.

**Faults**, from the same sources as the OpenAI routes (settings default, ``@spec`` after the model
id, the ``x-mock-fault`` header, a ``mock_fault`` body field) and the same keys:
``status`` answers with a Bedrock error (header ``x-amzn-ErrorType``, body ``{"message"}``; the
type comes from :data:`ERROR_TYPES`, or from ``code=`` e.g. ``status=429&code=ModelNotReadyException``);
``delay_first_byte``; ``drop_after=N`` aborts the connection after ``messageStart`` and N content
deltas (non-stream: half a body); ``omit_usage`` drops the ``metadata`` event and the ``usage``
of the Converse response; ``token_delay``; ``tokens``. ``mock_reply_tokens`` / ``mock_token_delay``
body fields work as on the OpenAI routes (boto3 cannot send body extras; raw HTTP clients can).

Statistics go to the app's shared :class:`~quotagate_tools.mock.stats.MockStats` (``chat_requests``,
``completed``, ``streams_cut``, ``client_disconnects``, ``error_responses``, ``in_flight``,
``prompt_tokens``/``completion_tokens``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from quotagate import tokens
from quotagate_tools.mock import billing, structured, vocab
from quotagate_tools.mock.eventstream import CONTENT_TYPE as EVENTSTREAM_CONTENT_TYPE
from quotagate_tools.mock.eventstream import encode_event
from quotagate_tools.mock.exchange import Exchange, PlanStream, Rejection, StreamCut, json_bytes
from quotagate_tools.mock.faults import FAULT_HEADER, FaultSpec, FaultSpecError, parse_fault_spec, split_model
from quotagate_tools.mock.request_options import is_int, is_number, reply_pace, request_fault

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

    from quotagate_tools.mock.settings import MockSettings
    from quotagate_tools.mock.stats import Ticket

logger = logging.getLogger("quotagate_tools.mock")

CONVERSE_PATH = "/model/{model_id:path}/converse"
CONVERSE_STREAM_PATH = "/model/{model_id:path}/converse-stream"
TOOL_PREFACE_TOKENS = 4
TOOL_INPUT_FRAGMENT_CHARS = 6
ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"

# HTTP status -> Bedrock error type, as the service answers them.
ERROR_TYPES: dict[int, str] = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_ERROR_MESSAGES: dict[str, str] = {
    "ValidationException": "Invalid request (injected by the mock).",
    "AccessDeniedException": "You don't have access to the model with the specified model ID (injected by the mock).",
    "ResourceNotFoundException": "The model does not exist (injected by the mock).",
    "ModelTimeoutException": "The model timed out (injected by the mock).",
    "ModelErrorException": "The model failed to process the request (injected by the mock).",
    "ThrottlingException": "Too many requests, please wait before trying again (injected by the mock).",
    "ModelNotReadyException": "The model is not ready to serve requests (injected by the mock).",
    "InternalServerException": "An internal server error occurred (injected by the mock).",
    "ServiceUnavailableException": "The service is unavailable, try again later (injected by the mock).",
}
_ROLES = ("user", "assistant")
_CHOICES = ("auto", "any", "tool")
_MEDIA_BLOCKS = ("image", "document", "video", "audio")


class BedrockReject(Rejection):
    """A Bedrock-shaped error response: ``x-amzn-ErrorType`` header and ``{"message": ...}``."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        headers = {
            "x-amzn-ErrorType": self.error_type + ERROR_TYPE_SUFFIX,
            "x-amzn-RequestId": str(uuid.uuid4()),
            **self.headers,
        }
        return JSONResponse({"message": self.message}, status_code=self.status, headers=headers)


def _invalid(message: str) -> BedrockReject:
    return BedrockReject(400, "ValidationException", message)


def injected_error(fault: FaultSpec) -> BedrockReject:
    """The error a ``status=`` fault produces."""
    assert fault.status is not None
    status = fault.status
    error_type = fault.code or ERROR_TYPES.get(
        status, "InternalServerException" if status >= 500 else "ValidationException"
    )
    message = _ERROR_MESSAGES.get(error_type, f"Error {status} (injected by the mock).")
    headers = {}
    if fault.retry_after is not None:
        headers["retry-after"] = f"{fault.retry_after:g}"
    return BedrockReject(status, error_type, message, headers)


# ---------------------------------------------------------------------------------------------
# The prompt view, token counts and the reply plan
# ---------------------------------------------------------------------------------------------


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _block_text(block: Any) -> str:
    if not isinstance(block, dict):
        return _compact(block)
    if isinstance(block.get("text"), str):
        return str(block["text"])
    for kind in _MEDIA_BLOCKS:
        if kind in block:
            return f"[{kind}]"
    result = block.get("toolResult")
    if isinstance(result, dict):
        parts = []
        for item in result.get("content") or []:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                parts.append(item["text"])
            elif isinstance(item, dict) and "json" in item:
                parts.append(_compact(item["json"]))
            else:
                parts.append(_block_text(item))
        return "\n".join(parts)
    return _compact(block)


def prompt_view(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request as OpenAI-style chat messages (what is counted and what picks the reply)."""
    view: list[dict[str, Any]] = []
    system = body.get("system") or []
    system_text = "\n".join(str(b["text"]) for b in system if isinstance(b, dict) and isinstance(b.get("text"), str))
    if system_text:
        view.append({"role": "system", "content": system_text})
    for message in body.get("messages") or []:
        blocks = message.get("content") or [] if isinstance(message, dict) else []
        role = message.get("role", "") if isinstance(message, dict) else ""
        view.append({"role": role, "content": "\n".join(_block_text(b) for b in blocks)})
    return view


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    config = body.get("toolConfig")
    if not isinstance(config, dict):
        return []
    tools = config.get("tools") or []
    return [t["toolSpec"] for t in tools if isinstance(t, dict) and isinstance(t.get("toolSpec"), dict)]


def input_tokens(body: dict[str, Any]) -> int:
    """``inputTokens`` the mock reports for a Converse request body (see the module docstring)."""
    count = tokens.chat_prompt_tokens(prompt_view(body))
    config = body.get("toolConfig")
    if isinstance(config, dict) and config.get("tools"):
        count += tokens.count_text(_compact(config["tools"]))
    return count


def _example_value(schema: Any, word: str) -> Any:
    if not isinstance(schema, dict):
        return None
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "array" and isinstance(schema.get("items"), dict):
        item = _example_value(schema["items"], word)
        return [item] if item is not None else []
    return {"string": word, "integer": 42, "number": 1.5, "boolean": True, "array": [], "object": {}}.get(
        kind if isinstance(kind, str) else "", None
    )


def example_input(schema: Any, words: list[str]) -> dict[str, Any]:
    """A deterministic tool input that fits ``schema`` (an object schema)."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    if isinstance(required, list) and required:
        names = [n for n in required if n in properties]
    else:
        names = list(properties)
    pool = words or ["mock"]
    return {name: _example_value(properties[name], pool[i % len(pool)]) for i, name in enumerate(names)}


@dataclass
class ConversePlan:
    """What the mock will answer to one Converse request."""

    model_id: str
    stream: bool
    input_tokens: int
    text_pieces: list[str]  # the text deltas, in order (their concatenation is the reply text)
    output_tokens: int
    stop_reason: str
    token_delay: float
    fault: FaultSpec
    tool_use: dict[str, Any] | None = None  # {"toolUseId", "name", "input"}
    tool_fragments: list[str] = field(default_factory=list)  # the input JSON, streamed in pieces

    @property
    def text(self) -> str:
        return "".join(self.text_pieces)

    # Read by the shared request and stream accounting (the names of the chat plan).
    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens

    @property
    def completion_tokens(self) -> int:
        return self.output_tokens

    @property
    def delay_steps(self) -> int:
        return len(self.text_pieces) + len(self.tool_fragments)

    def charges(self) -> billing.Charges:
        return billing.Charges(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)

    def usage(self) -> dict[str, int]:
        return {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "totalTokens": self.input_tokens + self.output_tokens,
        }

    def content(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.text_pieces:
            blocks.append({"text": self.text})
        if self.tool_use is not None:
            blocks.append({"toolUse": dict(self.tool_use)})
        return blocks


def _validate(body: dict[str, Any]) -> None:
    """The checks Bedrock makes that a translating client can get wrong."""
    uses_tools = _validate_messages(body)
    system = body.get("system")
    if system is not None and (not isinstance(system, list) or not all(isinstance(b, dict) for b in system)):
        raise _invalid("system: must be a list of system content blocks.")
    _validate_inference_config(body.get("inferenceConfig"))
    tool_config = body.get("toolConfig")
    if tool_config is not None:
        _validate_tool_config(tool_config)
    elif uses_tools:
        raise _invalid("The toolConfig field must be defined when using toolUse and toolResult content blocks.")


def _validate_messages(body: dict[str, Any]) -> bool:
    """Check the messages; True if they carry toolUse or toolResult blocks."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("The messages field is required and must contain at least one message.")
    uses_tools = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _invalid(f"messages.{i}.role: the role must be user or assistant.")
        uses_tools = _validate_blocks(message.get("content"), i) or uses_tools
        if i == 0 and message["role"] != "user":
            raise _invalid(
                "A conversation must start with a user message. "
                "Try again with a conversation that starts with a user message."
            )
        if i > 0 and message["role"] == messages[i - 1].get("role"):
            raise _invalid(
                "A conversation must alternate between user and assistant roles. Make sure the "
                "conversation alternates between user and assistant roles and try again."
            )
    return uses_tools


def _validate_blocks(content: Any, i: int) -> bool:
    """Check message ``i``'s content blocks; True if one is a toolUse or toolResult."""
    if not isinstance(content, list) or not content:
        raise _invalid(f"messages.{i}.content: a message must contain at least one content block.")
    uses_tools = False
    for j, block in enumerate(content):
        if not isinstance(block, dict) or len(block) != 1:
            raise _invalid(f"messages.{i}.content.{j}: a content block must have exactly one member.")
        if "text" in block and (not isinstance(block["text"], str) or not block["text"].strip()):
            raise _invalid(
                f"The text field in the ContentBlock object at messages.{i}.content.{j} "
                "is blank. Add text to the text field, and try again."
            )
        if "toolUse" in block or "toolResult" in block:
            uses_tools = True
    return uses_tools


def _validate_inference_config(config: Any) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise _invalid("inferenceConfig: must be an object.")
    max_tokens = config.get("maxTokens")
    if max_tokens is not None and (not is_int(max_tokens) or max_tokens < 1):
        raise _invalid("inferenceConfig.maxTokens: must be an integer of at least 1.")
    for name in ("temperature", "topP"):
        value = config.get(name)
        if value is not None and (not is_number(value) or not 0 <= value <= 1):
            raise _invalid(f"inferenceConfig.{name}: must be a number from 0 to 1.")
    stops = config.get("stopSequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops)):
        raise _invalid("inferenceConfig.stopSequences: must be a list of non-empty strings.")


def _validate_tool_config(tool_config: Any) -> None:
    tools = tool_config.get("tools") if isinstance(tool_config, dict) else None
    if not isinstance(tool_config, dict) or not isinstance(tools, list) or not tools:
        raise _invalid("toolConfig.tools: must be a non-empty list.")
    names = []
    for k, tool in enumerate(tools):
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("name"), str)
            or not spec["name"]
            or not isinstance(spec.get("inputSchema"), dict)
            or "json" not in spec["inputSchema"]
        ):
            raise _invalid(f"toolConfig.tools.{k}: a toolSpec needs a name and an inputSchema.json.")
        names.append(spec["name"])
    choice = tool_config.get("toolChoice")
    if choice is not None:
        if not isinstance(choice, dict) or len(choice) != 1 or next(iter(choice)) not in _CHOICES:
            raise _invalid("toolConfig.toolChoice: must be one of auto, any or tool.")
        named = choice.get("tool")
        if "tool" in choice and (not isinstance(named, dict) or named.get("name") not in names):
            raise _invalid("toolConfig.toolChoice.tool.name: must name one of the tools.")


def _parse_fault(source: Any, where: str) -> FaultSpec:
    try:
        return parse_fault_spec(source)
    except FaultSpecError as exc:
        raise _invalid(f"Invalid mock fault spec in {where}: {exc}") from None


def _stop_cut(pieces: list[str], stops: list[str]) -> tuple[list[str], int] | None:
    """If a stop sequence shows up in the reply: (the text pieces before it, pieces generated)."""
    text = ""
    for i, piece in enumerate(pieces):
        text += piece
        hits = [text.find(s) for s in stops if s and s in text]
        if hits:
            return vocab.pieces_before(pieces[: i + 1], min(hits)), i + 1
    return None


def plan_converse(
    model_id: str, body: dict[str, Any], settings: MockSettings, *, stream: bool, header_fault: str | None = None
) -> ConversePlan:
    """Validate a Converse request and decide the reply. Raises :class:`BedrockReject`."""
    base_model, model_fault = split_model(model_id)
    if not base_model:
        raise _invalid("The provided model identifier is invalid.")
    fault = request_fault(settings, model_fault, header_fault, body, _parse_fault, "modelId")
    if fault.status is not None:
        # An injected error does not depend on the body being valid (like the real service's
        # throttling, which comes before validation).
        return ConversePlan(base_model, stream, 0, [], 0, "end_turn", settings.token_delay, fault)
    _validate(body)

    length, token_delay = reply_pace(body, settings, fault, lambda field, problem: _invalid(f"{field}: {problem}."))

    config = body.get("inferenceConfig") or {}
    limit = None if fault.cap_field == "none" else config.get("maxTokens")
    stops = config.get("stopSequences") or []
    view = prompt_view(body)
    prompt = billing.bedrock_input_tokens(body) if fault.real_billing else input_tokens(body)
    pieces = vocab.reply_pieces(view, length)

    tools = _tools(body)
    last = body["messages"][-1]
    answering_tool = any(isinstance(b, dict) and "toolResult" in b for b in last.get("content") or [])
    if tools and not answering_tool:
        choice = (body.get("toolConfig") or {}).get("toolChoice") or {}
        wanted = choice.get("tool", {}).get("name") if isinstance(choice.get("tool"), dict) else None
        asked = tools[structured.tool_asked_for([str(t.get("name")) for t in tools], prompt_view(body))]
        spec = next((t for t in tools if t.get("name") == wanted), asked)
        preface = pieces[: min(TOOL_PREFACE_TOKENS, len(pieces))]
        words = [p.strip() for p in pieces[len(preface) :] or pieces]
        schema = (spec.get("inputSchema") or {}).get("json")
        # An open object (the gateway's json_object tool): filled as the prompt describes, like a model.
        described = None if isinstance(schema, dict) and schema.get("properties") else structured.described_object(view)
        tool_input = described if described is not None else example_input(schema, words)
        input_json = json.dumps(tool_input, separators=(",", ":"), ensure_ascii=False)
        needed = len(preface) + tokens.count_text(input_json)
        if limit is not None and limit < needed:
            kept = preface[:limit]
            return ConversePlan(base_model, stream, prompt, kept, len(kept), "max_tokens", token_delay, fault)
        digest = hashlib.sha256(vocab.messages_digest(view) + b"tool").hexdigest()
        tool_use = {"toolUseId": f"tooluse_{digest[:22]}", "name": spec["name"], "input": tool_input}
        fragments = [
            input_json[i : i + TOOL_INPUT_FRAGMENT_CHARS] for i in range(0, len(input_json), TOOL_INPUT_FRAGMENT_CHARS)
        ]
        return ConversePlan(
            base_model, stream, prompt, preface, needed, "tool_use", token_delay, fault, tool_use, fragments
        )

    stop_reason = "end_turn"
    if limit is not None and limit < len(pieces):
        pieces, stop_reason = pieces[:limit], "max_tokens"
    generated = len(pieces)
    cut = _stop_cut(pieces, stops)
    if cut is not None:
        pieces, generated = cut
        stop_reason = "stop_sequence"
    return ConversePlan(
        base_model, stream, prompt, [p for p in pieces if p], generated, stop_reason, token_delay, fault
    )


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


def _model_id(request: Request, suffix: str) -> str:
    """The model id exactly as sent (percent-decoded once), from the raw path when there is one:
    ids may contain ``:`` ``.`` and, for ARNs, an encoded ``/``."""
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes | bytearray):
        path = bytes(raw).decode("latin-1").split("?", 1)[0]
        prefix = "/model/"
        if path.startswith(prefix) and path.endswith(suffix) and len(path) > len(prefix) + len(suffix):
            return unquote(path[len(prefix) : -len(suffix)])
    return str(request.path_params.get("model_id", ""))


async def _read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError):
        raise BedrockReject(400, "SerializationException", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BedrockReject(400, "SerializationException", "The request body must be a JSON object.")
    return body


def converse_response(plan: ConversePlan, latency_ms: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": plan.content()}},
        "stopReason": plan.stop_reason,
        "metrics": {"latencyMs": latency_ms},
    }
    if not plan.fault.omit_usage:
        body["usage"] = plan.usage()
    return body


class _ConverseStream(PlanStream[ConversePlan]):
    """ConverseStream events, one event-stream frame each."""

    media_type = EVENTSTREAM_CONTENT_TYPE

    def __init__(self, plan: ConversePlan, ticket: Ticket, headers: dict[str, str]) -> None:
        self._started = time.monotonic()
        super().__init__(plan, ticket, headers)

    def _cut(self, sent: int) -> StreamCut:
        self._outcome = "cut"
        logger.info("mock: cutting a Bedrock stream on purpose after %d content deltas", sent)
        return StreamCut("mock drop_after: stream cut on purpose")

    async def _events(self) -> AsyncIterator[bytes]:
        plan = self._plan
        drop_after = plan.fault.drop_after
        yield encode_event("messageStart", {"role": "assistant"})
        sent = 0
        if plan.text_pieces:
            for piece in plan.text_pieces:
                if drop_after is not None and sent >= drop_after:
                    raise self._cut(sent)
                await asyncio.sleep(plan.token_delay)
                yield encode_event("contentBlockDelta", {"delta": {"text": piece}, "contentBlockIndex": 0})
                sent += 1
            yield encode_event("contentBlockStop", {"contentBlockIndex": 0})
        if plan.tool_use is not None:
            index = 1 if plan.text_pieces else 0
            start = {"toolUseId": plan.tool_use["toolUseId"], "name": plan.tool_use["name"]}
            yield encode_event("contentBlockStart", {"start": {"toolUse": start}, "contentBlockIndex": index})
            for fragment in plan.tool_fragments:
                if drop_after is not None and sent >= drop_after:
                    raise self._cut(sent)
                await asyncio.sleep(plan.token_delay)
                yield encode_event(
                    "contentBlockDelta", {"delta": {"toolUse": {"input": fragment}}, "contentBlockIndex": index}
                )
                sent += 1
            yield encode_event("contentBlockStop", {"contentBlockIndex": index})
        if drop_after is not None:
            raise self._cut(sent)
        yield encode_event("messageStop", {"stopReason": plan.stop_reason})
        if not plan.fault.omit_usage:
            latency = int((time.monotonic() - self._started) * 1000)
            yield encode_event("metadata", {"usage": plan.usage(), "metrics": {"latencyMs": latency}})
        self._outcome = "completed"


class _ConverseExchange(Exchange[ConversePlan]):
    rejection = BedrockReject

    def __init__(self, request: Request, stream: bool) -> None:
        super().__init__(request)
        self.streaming = stream
        self.started = time.monotonic()

    async def prepare(self) -> ConversePlan:
        stream = self.streaming
        model_id = _model_id(self.request, "/converse-stream" if stream else "/converse")
        body = await _read_json(self.request)
        self.record(body, model_id, stream, api="bedrock.converse-stream" if stream else "bedrock.converse")
        return plan_converse(
            model_id, body, self.settings, stream=stream, header_fault=self.request.headers.get(FAULT_HEADER)
        )

    def headers(self) -> dict[str, str]:
        return {"x-amzn-RequestId": str(uuid.uuid4())}

    def injected(self, fault: FaultSpec, headers: dict[str, str]) -> Response:
        return injected_error(fault).response()  # with a request id of its own

    def stream(self, plan: ConversePlan, ticket: Ticket, headers: dict[str, str]) -> Response:
        return _ConverseStream(plan, ticket, headers)

    def body(self, plan: ConversePlan, *, cut: bool) -> bytes:
        latency = 0 if cut else int((time.monotonic() - self.started) * 1000)
        return json_bytes(converse_response(plan, latency))


async def converse(request: Request) -> Response:
    return await _ConverseExchange(request, stream=False).respond()


async def converse_stream(request: Request) -> Response:
    return await _ConverseExchange(request, stream=True).respond()


def bedrock_routes() -> list[Route]:
    """The Bedrock Runtime routes, to add to the mock app (they use ``app.state.settings/stats``)."""
    return [
        Route(CONVERSE_STREAM_PATH, converse_stream, methods=["POST"]),
        Route(CONVERSE_PATH, converse, methods=["POST"]),
    ]
