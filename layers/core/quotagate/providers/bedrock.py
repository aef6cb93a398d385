"""Amazon Bedrock through the Converse / ConverseStream API, behind the OpenAI chat interface.

Requests: the OpenAI chat body (``model`` already the Bedrock model id or inference-profile
ARN) is translated by :func:`to_converse_request`: system/developer messages become ``system``
blocks; user/assistant messages become ``messages`` with text blocks (image parts given as
``data:`` URLs become image bytes blocks); consecutive messages of one role are merged (Bedrock
wants strict user/assistant alternation); assistant ``tool_calls`` become ``toolUse`` blocks and
``tool`` messages ``toolResult`` blocks in a user message; ``max_tokens``/``max_completion_tokens``,
``temperature``, ``top_p`` and ``stop`` go to ``inferenceConfig``; ``tools``/``tool_choice`` to
``toolConfig``. What Bedrock cannot express is refused with a 400 before any call (``n`` > 1,
remote image URLs, audio/file parts, non-function tools) or dropped (``tool_choice: "none"`` drops
the tools unless the conversation already holds tool blocks, which Bedrock only accepts with a
``toolConfig``; ``presence_penalty``, ``frequency_penalty``, ``seed``, ``logprobs``,
``parallel_tool_calls`` and ``user`` are ignored). The gateway has checked the values against the
OpenAI ranges; ``temperature`` (OpenAI's 0..2) is clamped to Bedrock's 0..1 exactly as for Anthropic
(:func:`~quotagate.logic.parameters.provider_temperature`). ``response_format`` ``json_object`` /
``json_schema`` becomes a tool spec with the schema, forced with ``toolChoice: {"tool"}`` (``{"any"}``
when the client's own tools are callable too); its ``toolUse`` input comes back as the message
content (streamed as content chunks) with ``finish_reason`` ``stop``.

Responses: text blocks -> ``content``, ``toolUse`` -> ``tool_calls``, ``stopReason`` ->
``finish_reason`` (:data:`FINISH_REASONS`), ``usage`` -> OpenAI usage, where ``prompt_tokens`` is
``inputTokens`` plus the cache read/write input tokens (all billed input) and
``prompt_tokens_details.cached_tokens`` the cache reads. Streams become ``chat.completion.chunk``
events: ``messageStart`` -> the role chunk, text deltas -> content chunks, ``toolUse`` starts and
input deltas -> ``tool_calls`` chunks, ``messageStop`` -> the finish chunk, ``metadata`` -> the
usage chunk (``choices: []``, only with ``stream_options.include_usage``), then ``[DONE]``.

Calls: boto3 is synchronous. ``complete`` runs ``converse`` in a worker thread (anyio); a stream
runs ``converse_stream`` and the iteration of its event stream in a dedicated daemon thread (a
stream can last minutes: it must not hold one of anyio's default worker-thread tokens, which the
gateway's own DynamoDB calls need) and hands each event to the event loop through an asyncio
queue. Closing (or cancelling) the async iterator shuts the socket down for reading, which wakes
the worker at once; the worker then closes the connection, so the upstream sees the disconnect
and stops generating. Credentials are the usual AWS chain (the Lambda role; no API key).
Timeouts: botocore ``connect_timeout``/``read_timeout`` from the provider config (read = time to
the response headers and the longest silence inside a stream), retries off (the gateway fails
over). The boto3 client is built once per (region, endpoint, timeouts) and shared: clients are
thread-safe and slow to build.

Errors before the first event raise :class:`UpstreamError` (:func:`upstream_error` maps the
Bedrock error codes), timeouts :class:`UpstreamTimeout`; any failure after the first event raises
:class:`StreamInterrupted`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Final

from anyio import to_thread

from quotagate import settings
from quotagate.logic.parameters import ResponseTool, provider_temperature, response_tool
from quotagate.providers.base import DONE_EVENT, SSEEvent
from quotagate.providers.exceptions import StreamInterrupted, UpstreamError, UpstreamTimeout
from quotagate.providers.openai_compat import ChunkBuilder, arguments_json
from quotagate.redaction import known_code
from quotagate.upstream_log import log_upstream_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from quotagate.config import Provider

SERVICE_NAME: Final = "bedrock-runtime"
MAX_POOL_CONNECTIONS = 64
DEFAULT_THROTTLE_RETRY_AFTER = 1.0  # seconds, when a ThrottlingException carries no retry-after
MAX_MESSAGE_DETAIL = 500

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
}
_IMAGE_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "gif": "gif", "webp": "webp"}

# Bedrock error code (lower-cased; event-stream exceptions are lowerCamel) -> (status, code).
_RATE_LIMITED = {"throttlingexception", "servicequotaexceededexception", "toomanyrequestsexception"}
_UNAVAILABLE = {"serviceunavailableexception", "modelnotreadyexception"}
_SERVER_ERRORS = {"internalserverexception", "modelerrorexception", "modelstreamerrorexception"}
_DENIED = {
    "accessdeniedexception",
    "unrecognizedclientexception",
    "invalidsignatureexception",
    "expiredtokenexception",
    "incompletesignature",
    "missingauthenticationtokenexception",
    "missingauthenticationtoken",
}


# ---------------------------------------------------------------------------------------------
# OpenAI -> Converse
# ---------------------------------------------------------------------------------------------


def _bad_request(message: str, code: str = "invalid_value") -> UpstreamError:
    return UpstreamError(400, message, error_type="invalid_request_error", code=code)


def _unsupported(message: str) -> UpstreamError:
    return _bad_request(message, code="unsupported_for_provider")


def _image_block(url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise _unsupported(f"'{where}': Bedrock models take images only as base64 data: URLs.")
    header, sep, data = url[len("data:") :].partition(",")
    media, *params = header.split(";")
    media = media.strip().lower()
    image_format = _IMAGE_FORMATS.get(media[len("image/") :]) if media.startswith("image/") else None
    if not sep or "base64" not in (p.strip().lower() for p in params):
        raise _bad_request(f"'{where}': an image data: URL must be base64-encoded.")
    if image_format is None:
        raise _unsupported(f"'{where}': image type '{media}' is not supported (png, jpeg, gif, webp).")
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _bad_request(f"'{where}': the image data is not valid base64.") from None
    if not raw:
        raise _bad_request(f"'{where}': the image is empty.")
    return {"image": {"format": image_format, "source": {"bytes": raw}}}


def _text_blocks(content: Any, where: str, allow_images: bool) -> list[dict[str, Any]]:
    """Converse blocks for an OpenAI ``content`` (a string or a list of parts); blank text is dropped
    (Bedrock rejects blank text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content.strip() else []
    if not isinstance(content, list):
        raise _bad_request(f"'{where}' must be a string or an array of parts.")
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        part_where = f"{where}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal") or (kind is None and isinstance(part, dict) and "text" in part):
            text = part.get("text") if kind != "refusal" else part.get("refusal")
            if not isinstance(text, str):
                raise _bad_request(f"'{part_where}.text' must be a string.")
            if text.strip():
                blocks.append({"text": text})
        elif kind == "image_url" and allow_images:
            image = part.get("image_url")
            blocks.append(_image_block(image.get("url") if isinstance(image, dict) else image, part_where))
        else:
            raise _unsupported(f"'{part_where}': content parts of type '{kind}' are not supported here.")
    return blocks


def _tool_arguments(arguments: Any, where: str) -> Any:
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        raise _bad_request(f"'{where}' must be a JSON string.")
    try:
        value = json.loads(arguments)
    except ValueError:
        raise _bad_request(f"'{where}' is not valid JSON.") from None
    if not isinstance(value, dict):
        raise _bad_request(f"'{where}' must encode a JSON object.")
    return value


def _legacy_function_id(name: Any) -> str:
    return f"fc_{name}"


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = _text_blocks(message.get("content"), f"{where}.content", allow_images=False)
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise _bad_request(f"'{where}.tool_calls' must be an array.")
    for i, call in enumerate(tool_calls):
        call_where = f"{where}.tool_calls[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not call.get("id"):
            raise _bad_request(f"'{call_where}' needs an id and a function name.")
        blocks.append(
            {
                "toolUse": {
                    "toolUseId": str(call["id"]),
                    "name": function["name"],
                    "input": _tool_arguments(function.get("arguments"), f"{call_where}.function.arguments"),
                }
            }
        )
    legacy = message.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("name"), str):
        blocks.append(
            {
                "toolUse": {
                    "toolUseId": _legacy_function_id(legacy["name"]),
                    "name": legacy["name"],
                    "input": _tool_arguments(legacy.get("arguments"), f"{where}.function_call.arguments"),
                }
            }
        )
    return blocks


def _tool_result(tool_use_id: Any, content: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise _bad_request(f"'{where}.tool_call_id' is required.")
    blocks = _text_blocks(content, f"{where}.content", allow_images=False)
    return {"toolResult": {"toolUseId": tool_use_id, "content": blocks}}


def _system_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    return _text_blocks(content, where, allow_images=False)


def convert_messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI ``messages`` -> (Converse ``system`` blocks, Converse ``messages``)."""
    if not isinstance(messages, list) or not messages:
        raise _bad_request("'messages' must be a non-empty array.")
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": list(blocks)})

    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad_request(f"'{where}' must be an object.")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_system_blocks(message.get("content"), f"{where}.content"))
        elif role == "user":
            add("user", _text_blocks(message.get("content"), f"{where}.content", allow_images=True))
        elif role == "assistant":
            add("assistant", _assistant_blocks(message, where))
        elif role == "tool":
            add("user", [_tool_result(message.get("tool_call_id"), message.get("content"), where)])
        elif role == "function":
            legacy_id = _legacy_function_id(message.get("name"))
            add("user", [_tool_result(legacy_id, message.get("content"), where)])
        else:
            raise _bad_request(f"'{where}.role' {role!r} is not supported.")
    if not out:  # as on Anthropic targets: a provider limit, so an alias tries its next target
        raise _unsupported("The conversation has no user or assistant content.")
    if out[0]["role"] != "user":  # Bedrock's own rule; other providers take an assistant opening
        raise _unsupported("Bedrock models need the conversation to start with a user message.")
    return system, out


def _tool_names_in(messages: list[dict[str, Any]]) -> tuple[bool, list[str]]:
    uses_tools, names = False, []
    for message in messages:
        for block in message["content"]:
            if "toolUse" in block:
                uses_tools = True
                if block["toolUse"]["name"] not in names:
                    names.append(block["toolUse"]["name"])
            elif "toolResult" in block:
                uses_tools = True
    return uses_tools, names


def convert_tools(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """OpenAI ``tools``/``tool_choice`` -> Converse ``toolConfig`` (or None for no tools)."""
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _bad_request("'tools' must be an array.")
    specs = [_tool_spec(i, tool) for i, tool in enumerate(tools)]
    uses_tools, used_names = _tool_names_in(messages)
    choice = body.get("tool_choice")
    if choice == "none":
        # Bedrock has no "none": leave the tools out, unless the history holds tool blocks (which
        # Bedrock accepts only together with a toolConfig); then keep them, without a choice.
        return {"tools": specs} if specs and uses_tools else _synthetic_tools(uses_tools, used_names, specs)
    if not specs:
        return _synthetic_tools(uses_tools, used_names, specs)
    config: dict[str, Any] = {"tools": specs}
    tool_choice = _tool_choice(choice, {s["toolSpec"]["name"] for s in specs})
    if tool_choice is not None:
        config["toolChoice"] = tool_choice
    return config


def _tool_spec(index: int, tool: Any) -> dict[str, Any]:
    """One OpenAI function tool as a Converse ``toolSpec``."""
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
        raise _unsupported(f"'tools[{index}]': only function tools are supported.")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise _bad_request(f"'tools[{index}].function.name' is required.")
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise _bad_request(f"'tools[{index}].function.parameters' must be a JSON schema object.")
    spec: dict[str, Any] = {"name": name, "inputSchema": {"json": parameters}}
    description = function.get("description")
    if isinstance(description, str) and description.strip():
        spec["description"] = description
    return {"toolSpec": spec}


def _tool_choice(choice: Any, tool_names: set[str]) -> dict[str, Any] | None:
    """OpenAI ``tool_choice`` (not "none") as a Converse ``toolChoice``, or None for the default."""
    if choice is None:
        return None
    if choice == "auto":
        return {"auto": {}}
    if choice == "required":
        return {"any": {}}
    if not isinstance(choice, dict):
        raise _bad_request("'tool_choice' must be 'none', 'auto', 'required' or a function.")
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str) or not name:
        raise _bad_request("'tool_choice' must name a function.")
    if name not in tool_names:
        raise _bad_request(f"'tool_choice' names '{name}', which is not in 'tools'.")
    return {"tool": {"name": name}}


def _synthetic_tools(uses_tools: bool, used_names: list[str], specs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A toolConfig for a history that holds tool blocks but came without (usable) tools: Bedrock
    rejects tool blocks without one. The synthetic specs accept any object input."""
    if specs and uses_tools:
        return {"tools": specs}
    if not uses_tools or not used_names:
        return None
    return {
        "tools": [
            {"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object", "properties": {}}}}}
            for name in used_names
        ]
    }


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad_request(f"'{name}' must be a number.")
    return float(value)


def to_converse_request(body: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``converse`` / ``converse_stream`` for an OpenAI chat body."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad_request("'model' is required.")
    n = body.get("n")
    if n not in (None, 1):
        raise _unsupported("Bedrock models return one choice: 'n' must be 1.")
    system, messages = convert_messages(body.get("messages"))
    request: dict[str, Any] = {"modelId": model, "messages": messages}
    if system:
        request["system"] = system

    inference: dict[str, Any] = {}
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad_request(f"'{name}' must be a positive integer.")
        inference["maxTokens"] = value
        break
    temperature = _number(body, "temperature")
    if temperature is not None:
        inference["temperature"] = provider_temperature(temperature)
    top_p = _number(body, "top_p")
    if top_p is not None:
        inference["topP"] = top_p
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    stops = [s for s in stops if isinstance(s, str) and s]
    if stops:
        inference["stopSequences"] = stops
    if inference:
        request["inferenceConfig"] = inference

    tool_config = convert_tools(body, messages)
    structured = response_tool(body)
    if structured is not None:
        tool_config = _with_response_tool(body, tool_config, structured)
    if tool_config is not None:
        request["toolConfig"] = tool_config
    return request


def _with_response_tool(body: dict[str, Any], config: dict[str, Any] | None, tool: ResponseTool) -> dict[str, Any]:
    """Structured output as a forced tool call: the answer is the tool's input."""
    specs = list((config or {}).get("tools") or [])
    if any(spec["toolSpec"]["name"] == tool.name for spec in specs):
        raise _unsupported(f"'response_format' is named '{tool.name}', like one of the tools.")
    specs.append(
        {"toolSpec": {"name": tool.name, "description": tool.description, "inputSchema": {"json": tool.schema}}}
    )
    choice = (config or {}).get("toolChoice")
    if choice is not None and "tool" in choice:
        return {"tools": specs, "toolChoice": choice}  # a named function stays forced
    clients_tools_callable = bool(body.get("tools")) and body.get("tool_choice") != "none"
    if clients_tools_callable:
        return {"tools": specs, "toolChoice": {"any": {}}}  # a real tool call, or the structured answer
    return {"tools": specs, "toolChoice": {"tool": {"name": tool.name}}}


# ---------------------------------------------------------------------------------------------
# Converse -> OpenAI
# ---------------------------------------------------------------------------------------------


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _valid_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and _valid_count(value) else 0


def openai_usage(usage: Any) -> dict[str, Any] | None:
    """Bedrock ``TokenUsage`` -> OpenAI ``usage`` (None if it holds no usable counts)."""
    if not isinstance(usage, dict):
        return None
    if not all(_valid_count(usage.get(name)) for name in ("inputTokens", "outputTokens")):
        return None
    input_tokens, output_tokens = _count(usage, "inputTokens"), _count(usage, "outputTokens")
    cache_read = _count(usage, "cacheReadInputTokens")
    prompt = input_tokens + cache_read + _count(usage, "cacheWriteInputTokens")
    result: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": output_tokens,
        "total_tokens": prompt + output_tokens,
    }
    if cache_read:
        result["prompt_tokens_details"] = {"cached_tokens": cache_read}
    return result


def to_chat_completion(response: dict[str, Any], model: str, response_tool: str | None = None) -> dict[str, Any]:
    """A Converse response -> an OpenAI ``chat.completion``. A call of ``response_tool``
    (structured output) is the message content."""
    output = response.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise UpstreamError(502, "The Bedrock response holds no message.")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    structured: str | None = None
    for block in message["content"]:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif (
            isinstance(block.get("toolUse"), dict)
            and response_tool is not None
            and block["toolUse"].get("name") == response_tool
        ):
            structured = arguments_json(block["toolUse"].get("input"))
        elif isinstance(block.get("toolUse"), dict):
            tool = block["toolUse"]
            tool_calls.append(
                {
                    "id": str(tool.get("toolUseId") or f"call_{uuid.uuid4().hex[:24]}"),
                    "type": "function",
                    "function": {"name": str(tool.get("name", "")), "arguments": arguments_json(tool.get("input"))},
                }
            )
    content = structured if structured is not None else "".join(texts)
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": content if content or not tool_calls else None,
        "refusal": None,
    }
    reason = finish_reason(response.get("stopReason"))
    if reason == "tool_calls" and not tool_calls:
        reason = "stop"  # only the structured answer was "called"
    if tool_calls:
        reply["tool_calls"] = tool_calls
    request_id = (response.get("ResponseMetadata") or {}).get("RequestId")
    completion: dict[str, Any] = {
        "id": f"chatcmpl-{str(request_id).replace('-', '') if request_id else uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": reason}],
    }
    usage = openai_usage(response.get("usage"))
    if usage is not None:
        completion["usage"] = usage
    return completion


class StreamTranslator(ChunkBuilder):
    """ConverseStream events -> OpenAI ``chat.completion.chunk`` dicts."""

    def __init__(
        self, model: str, include_usage: bool, completion_id: str | None = None, response_tool: str | None = None
    ) -> None:
        self.model = model
        self.response_tool = response_tool  # its input is streamed as content (structured output)
        self._structured_blocks: set[int] = set()
        self.include_usage = include_usage
        self.id = completion_id or f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.finished = False  # messageStop seen
        self.usage: dict[str, Any] | None = None  # from the metadata event
        self._role_sent = False
        self._tools: dict[int, int] = {}  # contentBlockIndex -> tool_calls index

    def _role(self) -> list[dict[str, Any]]:
        if self._role_sent:
            return []
        self._role_sent = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _tool_index(self, block: int) -> tuple[int, bool]:
        if block in self._tools:
            return self._tools[block], False
        self._tools[block] = len(self._tools)
        return self._tools[block], True

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if "messageStart" in event:
            return self._role()
        if "contentBlockStart" in event:
            body = event["contentBlockStart"] or {}
            tool = (body.get("start") or {}).get("toolUse")
            if not isinstance(tool, dict):
                return []
            if self.response_tool is not None and tool.get("name") == self.response_tool:
                self._structured_blocks.add(int(body.get("contentBlockIndex", 0)))
                return self._role()
            index, _ = self._tool_index(int(body.get("contentBlockIndex", 0)))
            start: dict[str, Any] = {
                "index": index,
                "id": str(tool.get("toolUseId", "")),
                "type": "function",
                "function": {"name": str(tool.get("name", "")), "arguments": ""},
            }
            return [*self._role(), self._chunk({"tool_calls": [start]})]
        if "contentBlockDelta" in event:
            body = event["contentBlockDelta"] or {}
            delta = body.get("delta") or {}
            text = delta.get("text")
            if isinstance(text, str) and self.response_tool is not None:
                return self._role()  # with structured output the content is the JSON answer alone
            if isinstance(text, str):
                return [*self._role(), self._chunk({"content": text})] if text else []
            tool = delta.get("toolUse")
            if (
                isinstance(tool, dict)
                and isinstance(tool.get("input"), str)
                and int(body.get("contentBlockIndex", 0)) in self._structured_blocks
            ):
                return [*self._role(), self._chunk({"content": tool["input"]})] if tool["input"] else []
            if isinstance(tool, dict) and isinstance(tool.get("input"), str):
                index, new = self._tool_index(int(body.get("contentBlockIndex", 0)))
                call: dict[str, Any] = {"index": index, "function": {"arguments": tool["input"]}}
                if new:  # a delta without its start: give the call an id and a type anyway
                    call.update(id=f"call_{uuid.uuid4().hex[:24]}", type="function")
                    call["function"]["name"] = ""
                return [*self._role(), self._chunk({"tool_calls": [call]})]
            return []  # reasoning, citations...: not part of the OpenAI chat shape
        if "messageStop" in event:
            self.finished = True
            reason = finish_reason((event["messageStop"] or {}).get("stopReason"))
            if reason == "tool_calls" and not self._tools:
                reason = "stop"  # only the structured answer was "called"
            return [*self._role(), self._chunk({}, reason)]
        if "metadata" in event:
            self.usage = openai_usage((event["metadata"] or {}).get("usage"))
            if self.usage is None or not self.include_usage:
                return []
            return [self._usage_chunk(self.usage)]
        return []  # contentBlockStop, unknown events


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if isinstance(headers, dict) else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _client_error(exc: Any, name: str) -> UpstreamError:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    metadata = response.get("ResponseMetadata") or {}
    code = str(error.get("Code") or "")
    status = metadata.get("HTTPStatusCode")
    # The upstream's text may quote secrets: the client sees the error code, the log the text.
    log_upstream_error(name, status if isinstance(status, int) else None, error.get("Message"))
    message = f"Upstream provider '{name}' returned {known_code(code) or 'an error'}"
    if isinstance(status, int):
        message += f" (HTTP {status})"
    message += "."
    lower = code.lower()
    headers = metadata.get("HTTPHeaders")
    if lower in _RATE_LIMITED:
        retry = _retry_after(headers)
        if lower == "throttlingexception" and retry is None:
            retry = DEFAULT_THROTTLE_RETRY_AFTER
        return UpstreamError(429, message, retry, code="upstream_rate_limited")
    if lower == "validationexception":
        return UpstreamError(400, message, error_type="invalid_request_error", code="upstream_invalid_request")
    if lower in _UNAVAILABLE:
        return UpstreamError(503, message, _retry_after(headers), code="upstream_unavailable")
    if lower == "modeltimeoutexception":
        return UpstreamTimeout(message)
    if lower in _DENIED:
        return UpstreamError(502, message, code="upstream_access_denied")
    if lower == "resourcenotfoundexception":
        return UpstreamError(502, message, code="upstream_model_not_found")
    if lower in _SERVER_ERRORS:
        return UpstreamError(502, message)
    if not isinstance(status, int) or status >= 500 or status in (401, 403, 404):
        return UpstreamError(502, message)
    if status == 429:
        return UpstreamError(429, message, _retry_after(headers), code="upstream_rate_limited")
    return UpstreamError(status, message)


def _is_timeout(exc: BaseException) -> bool:
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    return isinstance(exc, ConnectTimeoutError | ReadTimeoutError | Urllib3Timeout | TimeoutError)


def upstream_error(exc: BaseException, name: str) -> UpstreamError:
    """What a failure before the first event means for the client (and for failover)."""
    if isinstance(exc, UpstreamError):
        return exc
    from botocore import exceptions as bex

    if isinstance(exc, bex.ClientError):  # EventStreamError (an exception event) included
        return _client_error(exc, name)
    if _is_timeout(exc):
        return UpstreamTimeout(f"Upstream provider '{name}' timed out.")
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError | bex.CredentialRetrievalError):
        return UpstreamError(
            503, f"Credentials for provider '{name}' are unavailable.", code="provider_credentials_unavailable"
        )
    if isinstance(exc, bex.NoRegionError):
        return UpstreamError(
            502, f"Provider '{name}' has no AWS region (set AWS_REGION).", code="provider_misconfigured"
        )
    if isinstance(exc, bex.ParamValidationError):
        return _bad_request(
            f"The request cannot be sent to provider '{name}': {str(exc)[:MAX_MESSAGE_DETAIL]}",
            code="upstream_invalid_request",
        )
    if isinstance(exc, bex.ConnectionError | bex.HTTPClientError | OSError):
        return UpstreamError(502, f"Upstream provider '{name}' is unreachable.", code="upstream_unreachable")
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, Urllib3Error):
        return UpstreamError(502, f"Upstream provider '{name}' closed the connection.", code="upstream_unreachable")
    return UpstreamError(502, f"Upstream provider '{name}' failed ({type(exc).__name__}).")


def interrupted(exc: BaseException, name: str) -> StreamInterrupted:
    """What a failure after the first event means: the stream broke."""
    from botocore.exceptions import ClientError

    if _is_timeout(exc):
        return StreamInterrupted(f"Upstream provider '{name}' went silent.")
    if isinstance(exc, ClientError):
        detail = _client_error(exc, name).message
        return StreamInterrupted(f"Upstream provider '{name}' failed mid-stream: {detail}")
    return StreamInterrupted(f"Upstream provider '{name}' dropped the stream.")


# ---------------------------------------------------------------------------------------------
# The boto3 client
# ---------------------------------------------------------------------------------------------


def provider_region(provider: Provider) -> str | None:
    """``provider.region`` when the config has one, else the Lambda/SDK region variables."""
    region = getattr(provider, "region", None)
    return region or settings.env("AWS_REGION") or settings.env("AWS_DEFAULT_REGION") or None


_clients: dict[tuple[str, str | None, float, float], Any] = {}
_clients_lock = threading.Lock()


def default_client(provider: Provider) -> Any:
    """A shared bedrock-runtime client for this provider's region, endpoint and timeouts."""
    region = provider_region(provider)
    if not region:
        raise UpstreamError(
            502, f"Provider '{provider.name}' has no AWS region (set AWS_REGION).", code="provider_misconfigured"
        )
    key = (region, provider.base_url or None, provider.connect_timeout, provider.read_timeout)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=provider.connect_timeout,
                read_timeout=provider.read_timeout,
                retries={"total_max_attempts": 1, "mode": "standard"},  # the gateway fails over
                max_pool_connections=MAX_POOL_CONNECTIONS,
                user_agent_extra="quotagate",
            )
            # A session per client: boto3's default session is not thread-safe.
            client = boto3.session.Session().client(
                SERVICE_NAME, region_name=region, endpoint_url=provider.base_url or None, config=config
            )
            _clients[key] = client
    return client


# ---------------------------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------------------------


def _interrupt(stream: Any) -> None:
    """Unblock a worker reading ``stream`` (a botocore EventStream) from another thread: shut the
    socket down for reading (the worker's read returns at once and the worker closes the
    connection); without that urllib3 feature, close the stream."""
    raw = getattr(stream, "_raw_stream", None)
    shutdown = getattr(raw, "shutdown", None)
    if callable(shutdown):
        try:
            shutdown()
            return
        except Exception:  # noqa: S110 (already released or closed: fall back to close)
            pass
    with contextlib.suppress(Exception):
        stream.close()


class _Pump:
    """Hands what a worker thread reads to the event loop, and lets the loop stop the worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._lock = threading.Lock()
        self._stream: Any = None
        self.cancelled = False

    def put(self, kind: str, value: Any) -> None:  # worker thread
        if self.cancelled:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self._loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def attach(self, stream: Any) -> bool:  # worker thread; False: already cancelled
        with self._lock:
            if self.cancelled:
                return False
            self._stream = stream
            return True

    def cancel(self) -> None:  # event loop; never blocks
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
            stream = self._stream
        if stream is not None:
            _interrupt(stream)


class BedrockProvider:
    """:class:`~quotagate.providers.base.ChatProvider` for Amazon Bedrock (Converse API).

    ``client_factory`` returns a bedrock-runtime client (called once per instance, in a worker
    thread); by default a shared boto3 client built from the provider config (region from
    ``provider.region`` if the config has one, else ``AWS_REGION``; ``base_url`` as the endpoint
    URL when not empty).
    """

    def __init__(self, provider: Provider, client_factory: Callable[[], Any] | None = None) -> None:
        self._provider = provider
        self._client_factory = client_factory or (lambda: default_client(provider))
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._provider.name

    def _get_client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def _converse(self, request: dict[str, Any]) -> dict[str, Any]:
        return dict(self._get_client().converse(**request))

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        request = to_converse_request(body)
        try:
            # Abandoned on cancellation: the call cannot be interrupted, its result is dropped.
            response = await to_thread.run_sync(self._converse, request, abandon_on_cancel=True)
        except Exception as exc:
            raise upstream_error(exc, self.name) from None
        tool = response_tool(body)
        return to_chat_completion(response, str(body["model"]), response_tool=tool.name if tool else None)

    def _pump_stream(self, request: dict[str, Any], pump: _Pump) -> None:  # worker thread
        stream = None
        try:
            response = self._get_client().converse_stream(**request)
            stream = response["stream"]
            if not pump.attach(stream):
                return
            for event in stream:
                if pump.cancelled:
                    return
                pump.put("event", event)
            pump.put("end", None)
        except Exception as exc:
            pump.put("error", exc)
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[SSEEvent]:
        request = to_converse_request(body)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        tool = response_tool(body)
        translator = StreamTranslator(str(body["model"]), include_usage, response_tool=tool.name if tool else None)
        pump = _Pump(asyncio.get_running_loop())
        worker = threading.Thread(
            target=self._pump_stream, args=(request, pump), name=f"bedrock-stream-{self.name}", daemon=True
        )
        worker.start()
        started = False
        try:
            while True:
                kind, value = await pump.queue.get()
                if kind == "event":
                    for chunk in translator.feed(value):
                        started = True
                        yield SSEEvent.from_chunk(chunk)
                elif kind == "error":
                    if started:
                        raise interrupted(value, self.name) from None
                    raise upstream_error(value, self.name) from None
                else:
                    break
            if not translator.finished:
                if started:
                    raise StreamInterrupted(f"Upstream provider '{self.name}' ended the stream early.")
                raise UpstreamError(502, f"Upstream provider '{self.name}' closed the stream without a reply.")
            yield DONE_EVENT
        finally:
            pump.cancel()
