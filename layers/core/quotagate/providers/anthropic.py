"""Anthropic Messages API provider: OpenAI chat requests in, OpenAI chat responses and chunks out.

The translation is pure (``to_messages_request``, ``to_chat_completion``, :class:`StreamTranslator`)
so it is tested without a network; :class:`AnthropicProvider` adds the HTTP call to
``{base_url}/messages`` (``base_url`` like ``https://api.anthropic.com/v1``) with ``x-api-key`` and
``anthropic-version`` headers, reusing the timeouts, error mapping and SSE parsing of
:mod:`quotagate.providers.openai_compat`.

OpenAI -> Messages:

- ``system`` / ``developer`` messages -> the top-level ``system`` (joined by blank lines, in order);
- ``user`` / ``assistant`` turns; ``tool`` messages -> ``tool_result`` blocks of a user turn;
  consecutive turns of one role are merged (tool results first, as Anthropic requires);
- content parts: ``text``; ``image_url`` (``data:`` URL -> base64 image source, other URLs -> url
  image source); ``file`` with a PDF ``data:`` URL -> a base64 ``document`` block;
- assistant ``tool_calls`` -> ``tool_use`` blocks (``arguments`` parsed into ``input``);
- ``max_completion_tokens`` / ``max_tokens`` -> ``max_tokens`` (required by Anthropic);
  ``stop`` -> ``stop_sequences``; ``temperature`` (OpenAI's 0..2, checked by the gateway, clamped to
  Anthropic's 0..1: :func:`~quotagate.logic.parameters.provider_temperature`), ``top_p``;
  ``tools`` (function tools) -> ``tools`` with ``input_schema``; ``tool_choice`` auto/none/
  required/function -> auto/none/any/tool; ``parallel_tool_calls: false`` ->
  ``disable_parallel_tool_use``; ``user`` -> ``metadata.user_id``;
- the mock model server's test fields (``mock_fault``, ``mock_reply_tokens``, ``mock_token_delay``)
  are passed through, as the OpenAI-compatible adapter passes everything through;
- ``response_format`` ``json_object`` / ``json_schema`` -> a tool whose ``input_schema`` is the
  schema, forced with ``tool_choice: {"type": "tool"}`` (``{"type": "any"}`` when the client's own
  tools are callable too); the tool's input comes back as the message content (streamed as content
  chunks) with ``finish_reason`` ``stop`` (see :mod:`quotagate.logic.parameters`);
- ignored: ``logprobs``, ``seed``, ``presence_penalty`` / ``frequency_penalty``, ``logit_bias``,
  ``stream_options`` (usage is always reported by Anthropic) and other OpenAI-only fields. ``n`` > 1,
  audio input and legacy ``function`` messages are refused (400).

Messages -> OpenAI: text blocks -> ``message.content``; ``tool_use`` -> ``tool_calls``
(``arguments`` as a JSON string); ``stop_reason`` end_turn/stop_sequence/pause_turn -> ``stop``
(a matched stop sequence is also named in the choice's ``stop_reason``, as vLLM does),
max_tokens/model_context_window_exceeded -> ``length``, tool_use -> ``tool_calls``, refusal ->
``content_filter``; ``usage.input_tokens`` (+ cache read and cache creation tokens) ->
``prompt_tokens``, ``output_tokens`` -> ``completion_tokens``.

Streaming: ``message_start`` -> the role chunk (input tokens remembered); text deltas -> content
chunks; ``tool_use`` starts and ``input_json_delta`` -> ``tool_calls`` chunks (index, id, name, then
argument pieces); ``message_delta`` -> the finish-reason chunk (its ``usage.output_tokens`` is
cumulative: it replaces, never adds); ``message_stop`` -> the usage chunk (when
``stream_options.include_usage`` and the upstream reported usage) then ``[DONE]``. ``ping`` is
ignored. An ``error`` event is an :class:`UpstreamError` before the first chunk and
:class:`StreamInterrupted` after it, as is a stream that ends without ``message_stop``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx

from quotagate.logic.parameters import ResponseTool, provider_temperature, response_tool
from quotagate.providers.base import DONE_EVENT, SSEEvent
from quotagate.providers.exceptions import (
    AnthropicStreamError,
    StreamInterrupted,
    TranslationError,
    UpstreamError,
    UpstreamTimeout,
)
from quotagate.providers.openai_compat import ChunkBuilder, HTTPProvider, arguments_json, parse_sse_events
from quotagate.redaction import known_code
from quotagate.upstream_log import log_upstream_error

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Sequence

ANTHROPIC_VERSION = "2023-06-01"
BETA_HEADER = "anthropic-beta"
DEFAULT_MAX_TOKENS = 4096  # only used if the gateway did not set max_tokens (it always does)
PASSTHROUGH_FIELDS: tuple[str, ...] = ("mock_fault", "mock_reply_tokens", "mock_token_delay")
OVERLOADED_STATUS = 529

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error type (of an ``error`` event) -> the status the gateway answers with.
_STREAM_ERROR_STATUS: dict[str, int] = {
    "overloaded_error": 503,
    "rate_limit_error": 429,
    "timeout_error": 504,
    "request_too_large": 413,
    "invalid_request_error": 400,
}


# ---------------------------------------------------------------------------------------------
# OpenAI request -> Anthropic Messages request
# ---------------------------------------------------------------------------------------------


def _parse_data_url(url: str, where: str) -> tuple[str, str] | None:
    """``data:<media type>;base64,<data>`` -> (media type, data); None if ``url`` is no data URL."""
    if not url.startswith("data:"):
        return None
    header, comma, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not comma or encoding.lower() != "base64" or not media_type:
        raise TranslationError(f"'{where}' must be a base64 data URL (data:<type>;base64,<data>).", where)
    return media_type.lower(), data


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise TranslationError(f"'{where}.image_url.url' must be a non-empty string.", where)
    parsed = _parse_data_url(url, f"{where}.image_url.url")
    if parsed is None:
        return {"type": "image", "source": {"type": "url", "url": url}}
    media_type, data = parsed
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _file_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    file = part.get("file")
    data_url = file.get("file_data") if isinstance(file, dict) else None
    parsed = _parse_data_url(data_url, f"{where}.file.file_data") if isinstance(data_url, str) else None
    if parsed is None or parsed[0] != "application/pdf":
        raise TranslationError(f"'{where}': only PDF files given inline as file_data are supported.", where)
    return {"type": "document", "source": {"type": "base64", "media_type": parsed[0], "data": parsed[1]}}


def _text_block(text: str, part: dict[str, Any] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if part is not None and isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _content_blocks(content: Any, where: str, allow_media: bool) -> list[dict[str, Any]]:
    """Anthropic content blocks of an OpenAI message content (a string or a list of parts).
    Empty texts are dropped (Anthropic refuses empty text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [_text_block(content)] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"'{where}' must be a string or an array of parts.", where)
    blocks = []
    for i, part in enumerate(content):
        here = f"{where}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict):
            raise TranslationError(f"'{here}' must be an object.", here)
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise TranslationError(f"'{here}.text' must be a string.", here)
            if part["text"]:
                blocks.append(_text_block(part["text"], part))
        elif kind == "refusal":
            continue  # an assistant's earlier refusal: nothing to send back
        elif kind == "image_url" and allow_media:
            blocks.append(_image_block(part, here))
        elif kind == "file" and allow_media:
            blocks.append(_file_block(part, here))
        else:
            raise TranslationError(f"Content part type {kind!r} at '{here}' is not supported by this model.", here)
    return blocks


def _text_of(content: Any, where: str) -> str:
    return "\n".join(block["text"] for block in _content_blocks(content, where, allow_media=False))


def _tool_use_blocks(tool_calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(tool_calls, list):
        raise TranslationError(f"'{where}' must be an array.", where)
    blocks = []
    for i, call in enumerate(tool_calls):
        here = f"{where}[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TranslationError(f"'{here}' must be a function call with a name.", here)
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise TranslationError(f"'{here}.function.arguments' must be a JSON object.", here)
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else f"call_{i}"
        blocks.append({"type": "tool_use", "id": call_id, "name": function["name"], "input": parsed})
    return blocks


def _tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(f"'{where}.tool_call_id' is required for a tool message.", where)
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, str):
        block["content"] = content
    else:
        block["content"] = _content_blocks(content, f"{where}.content", allow_media=True)
    return block


def _simplify(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if len(blocks) == 1 and blocks[0]["type"] == "text" and "cache_control" not in blocks[0]:
        return str(blocks[0]["text"])
    return blocks


def _messages(messages: list[Any]) -> tuple[str | None, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise TranslationError(f"'{where}' must be an object.", where)
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"), f"{where}.content")
            if text:
                system.append(text)
            continue
        if role == "user":
            anthropic_role = "user"
            blocks = _content_blocks(message.get("content"), f"{where}.content", allow_media=True)
        elif role == "assistant":
            anthropic_role = "assistant"
            if message.get("function_call"):
                raise TranslationError(
                    f"'{where}.function_call' (legacy functions) is not supported; use tool_calls.", where
                )
            blocks = _content_blocks(message.get("content"), f"{where}.content", allow_media=False)
            if message.get("tool_calls"):
                blocks += _tool_use_blocks(message["tool_calls"], f"{where}.tool_calls")
        elif role == "tool":
            anthropic_role = "user"
            blocks = [_tool_result_block(message, where)]
        else:
            raise TranslationError(f"Messages with role {role!r} are not supported by this model.", where)
        if not blocks:
            continue  # Anthropic refuses empty messages
        if turns and turns[-1][0] == anthropic_role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((anthropic_role, blocks))
    if not turns:  # Anthropic answers only a non-empty user or assistant turn
        raise TranslationError("The conversation has no user or assistant content.", "messages")
    out = []
    for role, blocks in turns:
        if role == "user":  # tool results must open the user turn that answers a tool_use
            blocks.sort(key=lambda block: block["type"] != "tool_result")
        out.append({"role": role, "content": _simplify(blocks)})
    return ("\n\n".join(system) or None), out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be an array.", "tools")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function.get("name"), str)
        ):
            raise TranslationError(f"'tools[{i}]' must be a function tool with a name.", f"tools[{i}]")
        schema = function.get("parameters")
        schema = dict(schema) if isinstance(schema, dict) else {"properties": {}}
        schema.setdefault("type", "object")
        converted: dict[str, Any] = {"name": function["name"], "input_schema": schema}
        if isinstance(function.get("description"), str) and function["description"]:
            converted["description"] = function["description"]
        out.append(converted)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        converted: dict[str, Any] | None = None
    elif choice == "auto":
        converted = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        converted = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise TranslationError("'tool_choice.function.name' must be a string.", "tool_choice")
        converted = {"type": "tool", "name": name}
    else:
        raise TranslationError("'tool_choice' must be 'auto', 'none', 'required' or a function.", "tool_choice")
    if parallel is False:
        converted = {**(converted or {"type": "auto"}), "disable_parallel_tool_use": True}
    return converted


def _force_response_tool(request: dict[str, Any], tool: ResponseTool) -> None:
    """Structured output as a forced tool call: the answer is the tool's input."""
    tools = request.setdefault("tools", [])
    if any(t["name"] == tool.name for t in tools):
        raise TranslationError(f"'response_format' is named '{tool.name}', like one of the tools.", "response_format")
    tools.append({"name": tool.name, "description": tool.description, "input_schema": tool.schema})
    choice = request.get("tool_choice") or {"type": "auto"}
    if len(tools) > 1 and choice["type"] in ("auto", "any"):
        request["tool_choice"] = {**choice, "type": "any"}  # a real tool call, or the structured answer
    elif choice["type"] != "tool":  # a named function stays forced
        request["tool_choice"] = {"type": "tool", "name": tool.name}


def to_messages_request(body: dict[str, Any]) -> dict[str, Any]:
    """The Anthropic Messages request for an OpenAI chat completion request (pure)."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise TranslationError("'n' greater than 1 is not supported by this model.", "n")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise TranslationError("'messages' must be an array.", "messages")
    system, turns = _messages(messages)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    request: dict[str, Any] = {"model": body.get("model"), "max_tokens": max_tokens, "messages": turns}
    if system:
        request["system"] = system
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    stops = [s for s in stops if isinstance(s, str) and s.strip()]
    if stops:
        request["stop_sequences"] = stops
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        request["temperature"] = provider_temperature(temperature)
    top_p = body.get("top_p")
    if isinstance(top_p, int | float) and not isinstance(top_p, bool):
        request["top_p"] = top_p
    if body.get("tools"):
        request["tools"] = _tools(body["tools"])
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            request["tool_choice"] = choice
    structured = response_tool(body)
    if structured is not None:
        _force_response_tool(request, structured)
    if isinstance(body.get("user"), str) and body["user"]:
        request["metadata"] = {"user_id": body["user"]}
    if body.get("stream"):
        request["stream"] = True
    for name in PASSTHROUGH_FIELDS:
        if name in body:
            request[name] = body[name]
    return request


# ---------------------------------------------------------------------------------------------
# Anthropic Messages response -> OpenAI chat completion
# ---------------------------------------------------------------------------------------------


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def finish_reason(stop_reason: Any) -> str | None:
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(str(stop_reason), "stop")


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _openai_usage(
    input_tokens: int, cache_read: int, cache_creation: int, output_tokens: int, cache_creation_1h: int = 0
) -> dict[str, Any]:
    prompt = input_tokens + cache_read + cache_creation
    details: dict[str, int] = {"cached_tokens": cache_read}
    if cache_creation:
        # Cache writes are priced apart (1.25x input for 5 minutes, 2x for 1 hour).
        details["cache_creation_tokens"] = cache_creation
        details["cache_creation_1h_tokens"] = cache_creation_1h
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output_tokens,
        "total_tokens": prompt + output_tokens,
        "prompt_tokens_details": details,
    }


def _cache_1h(usage: dict[str, Any]) -> int | None:
    creation = usage.get("cache_creation")
    return _count(creation.get("ephemeral_1h_input_tokens")) if isinstance(creation, dict) else None


def usage_from(usage: Any) -> dict[str, Any] | None:
    """OpenAI ``usage`` of an Anthropic ``usage`` object; None if it lacks the token counts."""
    if not isinstance(usage, dict):
        return None
    input_tokens, output_tokens = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    if input_tokens is None or output_tokens is None:
        return None
    return _openai_usage(
        input_tokens,
        _count(usage.get("cache_read_input_tokens")) or 0,
        _count(usage.get("cache_creation_input_tokens")) or 0,
        output_tokens,
        _cache_1h(usage) or 0,
    )


def to_chat_completion(
    message: dict[str, Any], model: str | None = None, created: int | None = None, response_tool: str | None = None
) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` of an Anthropic ``message`` (pure). A call of
    ``response_tool`` (structured output) is the message content."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    structured: str | None = None
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use" and response_tool is not None and block.get("name") == response_tool:
            structured = arguments_json(block.get("input"))
        elif block.get("type") == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id") or f"call_{len(tool_calls)}",
                    "type": "function",
                    "function": {"name": block.get("name") or "", "arguments": arguments_json(block.get("input"))},
                }
            )
    if structured is not None:
        texts = [structured]  # the structured answer, without the text the model put before it
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    reason = finish_reason(message.get("stop_reason")) or "stop"
    if reason == "tool_calls" and not tool_calls:
        reason = "stop"  # only the structured answer was "called"
    completion: dict[str, Any] = {
        "id": message.get("id") or f"msg_{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": message.get("model") or model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": reason,
            }
        ],
    }
    _name_stop_sequence(completion["choices"][0], message.get("stop_reason"), message.get("stop_sequence"))
    usage = usage_from(message.get("usage"))
    if usage is not None:
        completion["usage"] = usage
    return completion


def _name_stop_sequence(choice: dict[str, Any], stop_reason: Any, stop_sequence: Any) -> None:
    """Which stop sequence ended the answer, as vLLM reports it (``choices[].stop_reason``), so a
    Messages client can be told ``stop_sequence`` (``finish_reason`` alone says only ``stop``)."""
    if stop_reason == "stop_sequence" and isinstance(stop_sequence, str):
        choice["stop_reason"] = stop_sequence


# ---------------------------------------------------------------------------------------------
# Anthropic stream events -> OpenAI chat.completion.chunk
# ---------------------------------------------------------------------------------------------


class StreamTranslator(ChunkBuilder):
    """Turns Anthropic stream events, one at a time, into OpenAI chunks (pure)."""

    def __init__(
        self, model: str | None, include_usage: bool, created: int | None = None, response_tool: str | None = None
    ) -> None:
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.response_tool = response_tool  # its input is streamed as content (structured output)
        self._structured_blocks: set[int] = set()
        self.model = model
        self.created = created if created is not None else int(time.time())
        self.include_usage = include_usage
        self.finished = False  # message_stop seen
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self._finish_sent = False
        self._input: int | None = None
        self._cache_read = 0
        self._cache_creation = 0
        self._cache_creation_1h = 0
        self._output: int | None = None  # only the final (message_delta) count

    def _take_usage(self, usage: Any, final: bool) -> None:
        if not isinstance(usage, dict):
            return
        # Every count Anthropic sends is cumulative: the latest one replaces the earlier one.
        if _count(usage.get("input_tokens")) is not None:
            self._input = usage["input_tokens"]
        if _count(usage.get("cache_read_input_tokens")) is not None:
            self._cache_read = usage["cache_read_input_tokens"]
        if _count(usage.get("cache_creation_input_tokens")) is not None:
            self._cache_creation = usage["cache_creation_input_tokens"]
        if _cache_1h(usage) is not None:
            self._cache_creation_1h = _cache_1h(usage) or 0
        if final and _count(usage.get("output_tokens")) is not None:
            self._output = usage["output_tokens"]

    @property
    def usage(self) -> dict[str, Any] | None:
        """The usage the upstream reported (input from message_start, output from message_delta)."""
        if self._input is None or self._output is None:
            return None
        return _openai_usage(self._input, self._cache_read, self._cache_creation, self._output, self._cache_creation_1h)

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The OpenAI chunks for one Anthropic event. Raises AnthropicStreamError for ``error``."""
        kind = event.get("type")
        if kind == "message_start":
            message = _obj(event.get("message"))
            if isinstance(message.get("id"), str) and message["id"]:
                self.id = message["id"]
            if isinstance(message.get("model"), str) and message["model"] and not self.model:
                self.model = message["model"]
            self._take_usage(message.get("usage"), final=False)
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "content_block_delta":
            return self._block_delta(event)
        if kind == "message_delta":
            self._take_usage(event.get("usage"), final=True)
            delta = _obj(event.get("delta"))
            reason = finish_reason(delta.get("stop_reason"))
            if reason is None or self._finish_sent:
                return []
            if reason == "tool_calls" and not self._tool_index:
                reason = "stop"  # only the structured answer was "called"
            self._finish_sent = True
            chunk = self._chunk({}, reason)
            _name_stop_sequence(chunk["choices"][0], delta.get("stop_reason"), delta.get("stop_sequence"))
            return [chunk]
        if kind == "message_stop":
            self.finished = True
            chunks = [] if self._finish_sent else [self._chunk({}, "stop")]
            self._finish_sent = True
            usage = self.usage
            if self.include_usage and usage is not None:
                chunks.append(self._usage_chunk(usage))
            return chunks
        if kind == "error":
            error = _obj(event.get("error"))
            raise AnthropicStreamError(
                str(error.get("type") or "api_error"), str(error.get("message") or "stream error")
            )
        return []  # ping, content_block_stop, and event types added later

    def _block_start(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        block = _obj(event.get("content_block"))
        index = event.get("index")
        if (
            block.get("type") == "tool_use"
            and isinstance(index, int)
            and self.response_tool is not None
            and block.get("name") == self.response_tool
        ):
            self._structured_blocks.add(index)
            initial = block.get("input")
            return [self._chunk({"content": arguments_json(initial)})] if initial else []
        if block.get("type") == "tool_use" and isinstance(index, int):
            position = len(self._tool_index)
            self._tool_index[index] = position
            initial = block.get("input")
            call = {
                "index": position,
                "id": block.get("id") or f"call_{position}",
                "type": "function",
                "function": {"name": block.get("name") or "", "arguments": arguments_json(initial) if initial else ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if (
            block.get("type") == "text"
            and isinstance(block.get("text"), str)
            and block["text"]
            and self.response_tool is None
        ):
            return [self._chunk({"content": block["text"]})]
        return []

    def _block_delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        delta = _obj(event.get("delta"))
        if delta.get("type") == "text_delta" and self.response_tool is not None:
            return []  # with structured output the content is the JSON answer alone
        if delta.get("type") == "text_delta":
            text = delta.get("text")
            return [self._chunk({"content": text})] if isinstance(text, str) and text else []
        if delta.get("type") == "input_json_delta" and event.get("index") in self._structured_blocks:
            piece = delta.get("partial_json")
            return [self._chunk({"content": piece})] if isinstance(piece, str) and piece else []
        if delta.get("type") == "input_json_delta":
            piece = delta.get("partial_json")
            position = self._tool_index.get(event.get("index"))  # type: ignore[arg-type]
            if not isinstance(piece, str) or not piece or position is None:
                return []
            return [self._chunk({"tool_calls": [{"index": position, "function": {"arguments": piece}}]})]
        return []  # thinking, signature and citation deltas have no OpenAI chat equivalent


# ---------------------------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------------------------


def _response_tool_name(body: dict[str, Any]) -> str | None:
    tool = response_tool(body)
    return tool.name if tool is not None else None


def native_event_bytes(event: dict[str, Any]) -> bytes:
    """One Messages stream event as Anthropic frames it (``event:`` names the data's type)."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    return b"event: " + str(event.get("type")).encode() + b"\ndata: " + data + b"\n\n"


def native_request(body: dict[str, Any], model: str, max_tokens: int) -> dict[str, Any]:
    """A client's Messages request as one target receives it: its own model name and the output cap
    the gateway planned; everything else exactly as the client sent it."""
    return {**body, "model": model, "max_tokens": max_tokens}


def _is_message(data: dict[str, Any]) -> bool:
    return data.get("type") == "message" and isinstance(data.get("content"), list)


class AnthropicProvider(HTTPProvider):
    async def _headers(self, accept: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        key = await self._api_key()
        if key:
            headers["x-api-key"] = key
        headers["accept"] = accept
        return headers

    def _translate(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return to_messages_request(body)
        except TranslationError as error:
            raise UpstreamError(
                error.status, str(error), error_type="invalid_request_error", code="unsupported_for_provider"
            ) from None

    async def _raise_for_status(self, response: httpx.Response) -> None:
        try:
            await super()._raise_for_status(response)
        except UpstreamError as error:
            if response.status_code == OVERLOADED_STATUS:  # Anthropic's "overloaded": retry elsewhere
                error.status, error.code = 503, "upstream_overloaded"
            raise

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        request_body = self._translate({**body, "stream": False})
        data = await self._post_json(request_body, "/messages", _is_message)
        return to_chat_completion(data, body.get("model"), response_tool=_response_tool_name(body))

    def _stream_error(self, error: AnthropicStreamError, started: bool) -> Exception:
        log_upstream_error(self._name, f"stream {error.error_type}"[:80], error.message)
        kind = known_code(error.error_type)
        message = f"Upstream provider '{self._name}' reported an error" + (f" ({kind})." if kind else ".")
        if started:
            return StreamInterrupted(message)
        status = _STREAM_ERROR_STATUS.get(error.error_type, 502)
        code = (
            "upstream_overloaded"
            if error.error_type == "overloaded_error"
            else ("upstream_rate_limited" if status == 429 else "upstream_error")
        )
        return UpstreamError(status, message, code=code)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[SSEEvent]:
        request_body = self._translate({**body, "stream": True})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        translator = StreamTranslator(body.get("model"), include_usage, response_tool=_response_tool_name(body))
        events = self._events(request_body)
        try:
            async for event in events:
                for chunk in translator.feed(event):
                    yield SSEEvent.from_chunk(chunk)
                if translator.finished:
                    yield DONE_EVENT
                    return
        finally:
            await events.aclose()

    async def stream_messages(self, body: dict[str, Any], betas: Sequence[str] = ()) -> AsyncIterator[SSEEvent]:
        """A Messages request sent as it is (the caller sets ``model`` and ``max_tokens``), its
        answer as Anthropic's own events: ``raw`` is the event to forward, ``data`` its JSON.
        ``message_stop`` is the last event and is marked ``done``; upstream ``ping``s are dropped
        (the gateway sends its own keep-alives). ``betas``: the ``anthropic-beta`` values to send
        (allow-listed by the caller). Errors as :meth:`stream`."""
        events = self._events({**body, "stream": True}, {BETA_HEADER: ",".join(betas)} if betas else None)
        try:
            async for event in events:
                if event.get("type") == "ping":
                    continue
                done = event.get("type") == "message_stop"
                yield SSEEvent(native_event_bytes(event), event, done)
                if done:
                    return
        finally:
            await events.aclose()

    async def _events(
        self, request_body: dict[str, Any], extra_headers: dict[str, str] | None = None
    ) -> AsyncGenerator[dict[str, Any]]:
        """The JSON of every event of a streamed Messages answer, up to ``message_stop``. An
        ``error`` event or a broken stream is an :class:`UpstreamError` before the first event and
        :class:`StreamInterrupted` after it, as is a stream that ends without ``message_stop``."""
        response = await self._send(request_body, "/messages", "text/event-stream", extra_headers)
        started = False  # has an event been yielded?
        try:
            await self._raise_for_status(response)
            buffer = bytearray()
            try:
                async for data in response.aiter_bytes():
                    buffer.extend(data)
                    for event in parse_sse_events(buffer):
                        if event.data is None:
                            continue  # comments, keep-alives
                        if event.data.get("type") == "error":
                            error = _obj(event.data.get("error"))
                            stream_error = AnthropicStreamError(
                                str(error.get("type") or "api_error"), str(error.get("message") or "stream error")
                            )
                            raise self._stream_error(stream_error, started) from None
                        started = True
                        yield event.data
                        if event.data.get("type") == "message_stop":
                            return
            except httpx.TimeoutException:
                if not started:
                    raise UpstreamTimeout(f"Upstream provider '{self._name}' timed out.") from None
                raise StreamInterrupted(f"Upstream provider '{self._name}' went silent.") from None
            except httpx.HTTPError:
                if not started:
                    raise UpstreamError(
                        502, f"Upstream provider '{self._name}' dropped the stream.", code="upstream_unreachable"
                    ) from None
                raise StreamInterrupted(f"Upstream provider '{self._name}' dropped the stream.") from None
            if not started:
                raise UpstreamError(
                    502, f"Upstream provider '{self._name}' closed the stream without sending anything."
                )
            raise StreamInterrupted(f"Upstream provider '{self._name}' ended the stream before message_stop.")
        finally:
            await response.aclose()
