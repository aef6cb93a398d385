"""``POST /v1/responses`` (the OpenAI Responses API) on top of the chat request pipeline.

The request is validated strictly and translated into an OpenAI chat completion request
(:func:`parse_responses_request`); that request goes through :meth:`Gateway.chat` like any chat
request (identity, limits, route, breaker, reservation, failover, metering, settlement); the chat
answer is translated back into a ``response`` object (:func:`response_object`) or, for a stream,
into the Responses API's typed events (:class:`ResponsesStreamTranslator`).

Request -> chat:

- ``input``: a string (one user message) or items: messages (``role`` user/assistant/system/
  developer; ``content`` a string or ``input_text`` / ``output_text`` / ``input_image`` (URL) /
  ``input_file`` (inline ``file_data``) parts), ``function_call`` items (-> an assistant message's
  ``tool_calls``) and ``function_call_output`` items (-> ``tool`` messages); ``reasoning`` items are
  dropped (there is no chat equivalent);
- ``instructions`` -> a leading system message; ``tools`` (``type: function``, flat: name /
  description / parameters / strict) -> chat function tools; ``tool_choice`` auto/none/required/
  ``{"type": "function", "name"}``; ``parallel_tool_calls``; ``max_output_tokens`` -> ``max_tokens``;
  ``temperature``, ``top_p``; ``text.format`` text/json_object/json_schema -> ``response_format``;
  ``user`` / ``safety_identifier`` -> ``user``; ``reasoning.effort`` -> ``reasoning_effort``.
- The gateway is stateless: ``store`` is accepted and treated as false (the response says
  ``"store": false``); anything that needs server-side state — ``previous_response_id``,
  ``conversation``, ``prompt`` (stored prompts), ``background: true``, ``item_reference`` items,
  files by ``file_id`` — is a 400 naming the parameter (code ``unsupported_parameter``).
  ``service_tier`` -> ``service_tier`` (priced: the price table's tier multipliers);
  ``include``, ``prompt_cache_key``, ``truncation`` and ``stream_options`` are
  accepted and have no effect. Any other unknown parameter is a 400 ``unknown_parameter``.

Every error is raised as a :class:`GatewayError` (OpenAI-shaped) before anything is reserved.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from quotagate import wire
from quotagate.errors import GatewayError, invalid_request
from quotagate.logic.chat_request import parse_model_request
from quotagate.providers.openai_compat import parse_sse_events
from quotagate.wire import responses as wire_responses
from quotagate.wire.schema import WireError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from quotagate.identity import Identity
    from quotagate.logic.gateway import ChatResponse, Gateway
    from quotagate.providers.base import SSEEvent

MessageRole = Literal["user", "assistant", "system", "developer"]
_MESSAGE_ROLES: frozenset[str] = frozenset(get_args(MessageRole))
_TOOL_CHOICE_MODES: frozenset[str] = frozenset({"auto", "none", "required"})
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_FUNCTION_NAME = 64
NAMESPACE_SEPARATOR = "__"
# Test fields of the built-in mock model server, passed through as the chat endpoint passes them.
_MOCK_FIELDS: tuple[str, ...] = ("mock_fault", "mock_reply_tokens", "mock_token_delay")
STATELESS_PARAMETERS: tuple[str, ...] = ("previous_response_id", "conversation", "prompt")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _bad(message: str, param: str, code: str = "invalid_value") -> GatewayError:
    return invalid_request(message, param=param, code=code)


def _stateless(param: str) -> GatewayError:
    return _bad(
        f"'{param}' needs state stored on the server, and this gateway stores nothing: send the "
        "whole conversation in 'input' instead.",
        param,
        "unsupported_parameter",
    )


@dataclass
class ResponsesRequest:
    """A validated Responses request: the chat body it becomes, and what the response echoes."""

    model: str
    stream: bool
    chat_body: dict[str, Any]
    echo: dict[str, Any] = field(default_factory=dict)  # request fields repeated in the response object
    dropped: tuple[str, ...] = ()  # the fields removed (named in x-quotagate-dropped-params)
    # A flattened namespace tool's function name -> (namespace, name), to name its calls as sent.
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)

    def call_names(self, flat_name: str) -> dict[str, str]:
        """A function call item's ``name`` (and ``namespace``) for a chat tool call's name."""
        if flat_name in self.namespaced:
            namespace, name = self.namespaced[flat_name]
            return {"name": name, "namespace": namespace}
        return {"name": flat_name}


# ---------------------------------------------------------------------------------------------
# Request -> chat request
# ---------------------------------------------------------------------------------------------


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"'{where}' must be a string.", where)
    return value


def _image_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    if part.get("file_id") is not None:
        raise _stateless(f"{where}.file_id")
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise _bad(f"'{where}.image_url' must be a non-empty string (an https or data: URL).", f"{where}.image_url")
    image: dict[str, Any] = {"url": url}
    detail = part.get("detail")
    if detail is not None:
        if detail not in ("auto", "low", "high"):
            raise _bad(f"'{where}.detail' must be 'auto', 'low' or 'high'.", f"{where}.detail")
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def _file_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    if part.get("file_id") is not None:
        raise _stateless(f"{where}.file_id")
    data = part.get("file_data")
    if not isinstance(data, str) or not data:
        raise _bad(f"'{where}': files must be given inline as 'file_data' (a data: URL).", f"{where}.file_data")
    file: dict[str, Any] = {"file_data": data}
    if isinstance(part.get("filename"), str):
        file["filename"] = part["filename"]
    return {"type": "file", "file": file}


def _content_parts(content: Any, where: str, role: str) -> list[dict[str, Any]]:
    """Chat content parts of a Responses message ``content`` given as a list of parts."""
    if not isinstance(content, list):
        raise _bad(f"'{where}' must be a string or an array of content parts.", where)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        here = f"{where}[{i}]"
        if not isinstance(part, dict):
            raise _bad(f"'{here}' must be an object.", here)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": _text(part.get("text"), f"{here}.text")})
        elif kind == "refusal":
            _text(part.get("refusal"), f"{here}.refusal")  # an earlier refusal: nothing to send back
        elif kind == "input_image" and role == "user":
            parts.append(_image_part(part, here))
        elif kind == "input_file" and role == "user":
            parts.append(_file_part(part, here))
        else:
            raise _bad(
                f"Content part type {kind!r} is not supported in a {role} message ('{here}.type').", f"{here}.type"
            )
    return parts


def _joined_text(parts: list[dict[str, Any]]) -> str:
    return "".join(part["text"] for part in parts if part["type"] == "text")


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str) or role not in _MESSAGE_ROLES:
        raise _bad(f"'{where}.role' must be one of {sorted(_MESSAGE_ROLES)}.", f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    parts = _content_parts(content, f"{where}.content", role)
    if role == "user":
        return {"role": role, "content": parts}
    return {"role": role, "content": _joined_text(parts)}  # assistant / system text only


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"'{where}.call_id' must be a non-empty string.", f"{where}.call_id")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"'{where}.name' must be a non-empty string.", f"{where}.name")
    if item.get("namespace"):  # a call of a namespace's tool: named as the flattened tool is
        name = flat_name(item["namespace"], name)
    arguments = _text(item.get("arguments"), f"{where}.arguments")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _function_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"'{where}.call_id' must be a non-empty string.", f"{where}.call_id")
    output = item.get("output")
    if isinstance(output, list):
        output = _joined_text(_content_parts(output, f"{where}.output", "tool"))
    elif not isinstance(output, str):
        raise _bad(f"'{where}.output' must be a string or an array of input_text parts.", f"{where}.output")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def _input_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _bad("'input' must be a string or a non-empty array of input items.", "input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"'{where}' must be an object.", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = _function_call(item, where)
            last = messages[-1] if messages else None
            # Calls made in one turn (and the text before them) are one assistant chat message.
            if (
                last is not None
                and last["role"] == "assistant"
                and (last.get("tool_calls") or (i > 0 and value[i - 1].get("type", "message") == "message"))
            ):
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(_function_output(item, where))
        elif kind == "reasoning":
            continue  # no chat equivalent; the model reasons afresh
        elif kind == "item_reference":
            raise _stateless(where)
        else:
            raise _bad(
                f"Input items of type {kind!r} are not supported ('{where}.type').",
                f"{where}.type",
                "unsupported_parameter",
            )
    if not any(m["role"] != "system" and m["role"] != "developer" for m in messages):
        raise _bad("'input' must hold at least one user, assistant or tool item.", "input")
    return messages


def _function_tool(tool: dict[str, Any], where: str, name: str) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    description = tool.get("description")
    if description is not None:
        function["description"] = _text(description, f"{where}.description")
    parameters = tool.get("parameters")
    function["parameters"] = parameters if parameters is not None else {"type": "object", "properties": {}}
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _check_function_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        raise _bad(f"'{where}.name' must be 1 to 64 letters, digits, '_' or '-'.", f"{where}.name")
    return name


def flat_name(namespace: str, name: str) -> str:
    """The chat function name of a namespace's tool: ``namespace__name``, cut to 64 characters with
    a digest of the whole when longer (chat function names are at most 64)."""
    joined = f"{namespace}{NAMESPACE_SEPARATOR}{name}"
    if len(joined) <= MAX_FUNCTION_NAME and _FUNCTION_NAME.match(joined):
        return joined
    digest = hashlib.sha256(joined.encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", joined)
    return f"{safe[: MAX_FUNCTION_NAME - 9]}_{digest}"


def _tools(value: Any, namespaced: dict[str, tuple[str, str]], dropped: list[str]) -> list[dict[str, Any]]:
    """Chat function tools (types already checked by the declaration): function tools as they are,
    a namespace's function tools flattened (``namespace__name``), hosted web search dropped."""
    tools = []
    names: set[str] = set()
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        kind = tool.get("type")
        if kind in wire_responses.HOSTED_TOOLS_DROPPED:
            dropped.append(f"tools.{i}")  # named: the client asked for a search no target runs
            continue
        if kind == "namespace":
            for j, member in enumerate(tool["tools"]):
                flat = flat_name(tool["name"], member["name"])
                namespaced[flat] = (tool["name"], member["name"])
                tools.append(_function_tool(member, f"{where}.tools[{j}]", flat))
        else:
            tools.append(_function_tool(tool, where, _check_function_name(tool.get("name"), where)))
        for added in tools[len(names) :]:
            if added["function"]["name"] in names:
                raise _bad(f"'{where}': tool names must be unique.", f"{where}.name")
            names.add(added["function"]["name"])
    return tools


def _tool_choice(value: Any, tool_names: set[str]) -> Any:
    if isinstance(value, str) and value in _TOOL_CHOICE_MODES:
        if value == "required" and not tool_names:
            raise _bad("'tool_choice' is 'required' but no tools were given.", "tool_choice")
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        name = value.get("name")
        if not isinstance(name, str) or name not in tool_names:
            raise _bad("'tool_choice.name' must name one of the function tools in 'tools'.", "tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    raise _bad(
        "'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}.",
        "tool_choice",
        "unsupported_parameter" if isinstance(value, dict) else "invalid_value",
    )


def _response_format(text: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(chat ``response_format`` or None, the ``text`` echoed in the response)."""
    if text is None:
        return None, {"format": {"type": "text"}}
    if not isinstance(text, dict):
        raise _bad("'text' must be an object.", "text")
    unknown = set(text) - {"format", "verbosity"}
    if unknown:
        raise _bad(f"Unknown parameter 'text.{sorted(unknown)[0]}'.", f"text.{sorted(unknown)[0]}", "unknown_parameter")
    fmt = text.get("format")
    echo = {"format": fmt if fmt is not None else {"type": "text"}}
    if text.get("verbosity") is not None:
        if text["verbosity"] not in ("low", "medium", "high"):
            raise _bad("'text.verbosity' must be 'low', 'medium' or 'high'.", "text.verbosity")
        echo["verbosity"] = text["verbosity"]
    return _chat_response_format(fmt), echo


def _chat_response_format(fmt: Any) -> dict[str, Any] | None:
    """``text.format`` as the chat ``response_format`` (None for plain text)."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _bad("'text.format' must be an object.", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise _bad("'text.format.type' must be 'text', 'json_object' or 'json_schema'.", "text.format.type")
    name = fmt.get("name")
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        raise _bad("'text.format.name' must be 1 to 64 letters, digits, '_' or '-'.", "text.format.name")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise _bad("'text.format.schema' must be a JSON schema object.", "text.format.schema")
    json_schema: dict[str, Any] = {"name": name, "schema": schema}
    if fmt.get("description") is not None:
        json_schema["description"] = _text(fmt["description"], "text.format.description")
    if fmt.get("strict") is not None:
        if not isinstance(fmt["strict"], bool):
            raise _bad("'text.format.strict' must be a boolean.", "text.format.strict")
        json_schema["strict"] = fmt["strict"]
    return {"type": "json_schema", "json_schema": json_schema}


def _optional_number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"'{name}' must be a number.", name)
    return value


def _check_stateless(body: dict[str, Any]) -> None:
    for name in STATELESS_PARAMETERS:
        if body.get(name) is not None:
            raise _stateless(name)
    background = body.get("background")
    if background is True:
        raise _bad(
            "'background' needs responses stored on the server, and this gateway stores nothing: "
            "omit it or set it to false.",
            "background",
            "unsupported_parameter",
        )
    if background is not None and not isinstance(background, bool):
        raise _bad("'background' must be a boolean.", "background")
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        raise _bad("'store' must be a boolean.", "store")
    for name in ("max_tool_calls", "top_logprobs"):
        if body.get(name) is not None:
            raise _bad(f"'{name}' is not supported by this gateway.", name, "unsupported_parameter")


def parse_responses_request(
    raw: bytes, max_bytes: int, refuses_unknown: Callable[[str], bool] | None = None
) -> ResponsesRequest:
    """Validate a Responses request body and translate it into a chat completion request (pure)."""
    body, model = parse_model_request(raw, max_bytes)
    try:
        dropped = wire.check_body(
            wire_responses.RESPONSES, body, refuses_unknown is not None and refuses_unknown(model)
        )
    except WireError as error:
        where = wire.openai_path(error.path)
        raise _bad(f"{where}: {error.problem}", where, error.code) from None
    _check_stateless(body)

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean.", "stream")
    messages = _input_messages(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None:
        messages.insert(0, {"role": "system", "content": _text(instructions, "instructions")})
    chat: dict[str, Any] = {"model": model, "messages": messages}
    echo: dict[str, Any] = {"instructions": instructions}
    namespaced = _translate_tools(body, chat, echo, dropped)
    _translate_sampling(body, chat, echo)
    response_format, echo["text"] = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    _translate_caller_fields(body, chat, echo)
    for name in _MOCK_FIELDS:
        if name in body:
            chat[name] = body[name]
    if stream:
        # The gateway removes the usage chunk again unless the client asked for it: we do.
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return ResponsesRequest(
        model=model,
        stream=bool(stream),
        chat_body=chat,
        echo=echo,
        dropped=tuple(wire.openai_path(path) for path in dropped),
        namespaced=namespaced,
    )


def _translate_tools(
    body: dict[str, Any], chat: dict[str, Any], echo: dict[str, Any], dropped: list[str]
) -> dict[str, tuple[str, str]]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` into ``chat``; what the response
    echoes; the flattened namespace tools' names (hosted tools dropped are added to ``dropped``)."""
    namespaced: dict[str, tuple[str, str]] = {}
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"], namespaced, dropped)
        if not chat["tools"]:
            del chat["tools"]
    echo["tools"] = body.get("tools") or []
    tool_names = {t["function"]["name"] for t in chat.get("tools", [])}
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"], tool_names)
    echo["tool_choice"] = body.get("tool_choice") if body.get("tool_choice") is not None else "auto"
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise _bad("'parallel_tool_calls' must be a boolean.", "parallel_tool_calls")
        if tool_names:
            chat["parallel_tool_calls"] = parallel
    echo["parallel_tool_calls"] = parallel if parallel is not None else True
    return namespaced


def _translate_sampling(body: dict[str, Any], chat: dict[str, Any], echo: dict[str, Any]) -> None:
    """``max_output_tokens``, ``temperature``, ``top_p`` and ``reasoning`` into ``chat``."""
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
            raise _bad("'max_output_tokens' must be an integer of at least 1.", "max_output_tokens")
        chat["max_tokens"] = max_output
    echo["max_output_tokens"] = max_output
    for name in ("temperature", "top_p"):
        number = _optional_number(body, name)
        if number is not None:
            chat[name] = number
        echo[name] = number if number is not None else 1.0
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise _bad("'reasoning' must be an object.", "reasoning")
        effort = reasoning.get("effort")
        if effort is not None:
            if effort not in ("none", "minimal", "low", "medium", "high", "xhigh"):
                raise _bad("'reasoning.effort' must be none, minimal, low, medium, high or xhigh.", "reasoning.effort")
            chat["reasoning_effort"] = effort
    echo["reasoning"] = {"effort": (reasoning or {}).get("effort"), "summary": None}
    if isinstance(body.get("service_tier"), str):
        chat["service_tier"] = body["service_tier"]  # priced by the chat request (quotagate.logic.pricing)


def _translate_caller_fields(body: dict[str, Any], chat: dict[str, Any], echo: dict[str, Any]) -> None:
    """``metadata`` (echoed only) and ``user`` / ``safety_identifier``."""
    metadata = body.get("metadata")
    if metadata is not None and not _valid_metadata(metadata):
        raise _bad(
            "'metadata' must be an object of at most 16 string values (keys up to 64 characters, values up to 512).",
            "metadata",
        )
    echo["metadata"] = metadata or {}
    user = body.get("user") if body.get("user") is not None else body.get("safety_identifier")
    if user is not None:
        chat["user"] = _text(user, "user" if body.get("user") is not None else "safety_identifier")
    echo["user"] = body.get("user")


def _valid_metadata(metadata: Any) -> bool:
    return (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items()
        )
    )


# ---------------------------------------------------------------------------------------------
# Chat answer -> response object
# ---------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def responses_usage(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, reasoning_tokens: int = 0
) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _detail(usage: Any, section: str, name: str) -> int:
    details = usage.get(section) if isinstance(usage, dict) else None
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_of(chat_usage: Any, settled: Any = None) -> dict[str, Any] | None:
    """Responses ``usage``: the settled counts (what the quota was charged) when known, else the
    chat ``usage``; cache and reasoning details from the chat ``usage``."""
    cached = _detail(chat_usage, "prompt_tokens_details", "cached_tokens")
    reasoning = _detail(chat_usage, "completion_tokens_details", "reasoning_tokens")
    if settled is not None:
        return responses_usage(settled.prompt_tokens, settled.completion_tokens, cached, reasoning)
    if (
        isinstance(chat_usage, dict)
        and isinstance(chat_usage.get("prompt_tokens"), int)
        and isinstance(chat_usage.get("completion_tokens"), int)
    ):
        return responses_usage(chat_usage["prompt_tokens"], chat_usage["completion_tokens"], cached, reasoning)
    return None


def status_of(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
    """(``status``, ``incomplete_details``) for a chat ``finish_reason``."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def message_item(item_id: str, text: str, status: str = "completed", refusal: str | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text or not refusal:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def function_call_item(
    item_id: str, call_id: str, names: dict[str, str], arguments: str, status: str = "completed"
) -> dict[str, Any]:
    """``names``: ``name``, and ``namespace`` for a namespace's tool (:meth:`ResponsesRequest.call_names`)."""
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        **names,
        "arguments": arguments,
        "status": status,
    }


def response_skeleton(request: ResponsesRequest, response_id: str, created_at: int, model: str) -> dict[str, Any]:
    """A ``response`` object without output: what ``response.created`` carries."""
    echo = request.echo
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": echo.get("reasoning", {"effort": None, "summary": None}),
        "service_tier": "default",
        "store": False,
        "temperature": echo.get("temperature", 1.0),
        "text": echo.get("text", {"format": {"type": "text"}}),
        "tool_choice": echo.get("tool_choice", "auto"),
        "tools": echo.get("tools", []),
        "top_p": echo.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": echo.get("user"),
        "metadata": echo.get("metadata", {}),
    }


def response_object(
    request: ResponsesRequest, completion: dict[str, Any], settled: Any = None, response_id: str | None = None
) -> dict[str, Any]:
    """The ``response`` object of a (non-streamed) chat completion."""
    choices = completion.get("choices") or [{}]
    choice = _dict(choices[0])
    message = _dict(choice.get("message"))
    created = completion.get("created")
    response = response_skeleton(
        request,
        response_id or new_id("resp"),
        created if isinstance(created, int) else int(time.time()),
        str(completion.get("model") or request.model),
    )
    output: list[dict[str, Any]] = []
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    refusal = message.get("refusal") if isinstance(message.get("refusal"), str) else None
    tool_calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    if text or refusal or not tool_calls:
        output.append(message_item(new_id("msg"), text, refusal=refusal))
    for call in tool_calls:
        function = _dict(call.get("function"))
        output.append(
            function_call_item(
                new_id("fc"),
                str(call.get("id") or new_id("call")),
                request.call_names(str(function.get("name") or "")),
                str(function.get("arguments") or ""),
            )
        )
    status, incomplete = status_of(choice.get("finish_reason"))
    response.update(
        status=status, incomplete_details=incomplete, output=output, usage=usage_of(completion.get("usage"), settled)
    )
    return response


# ---------------------------------------------------------------------------------------------
# Chat chunks -> Responses stream events
# ---------------------------------------------------------------------------------------------


def sse(event: dict[str, Any]) -> bytes:
    return (
        f"event: {event['type']}\n".encode() + b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
    )


@dataclass
class _OpenCall:
    output_index: int
    item: dict[str, Any]


class ResponsesStreamTranslator:
    """Turns the chat chunks of one streamed completion into Responses events (pure). Every event
    carries a ``sequence_number``, counted from 0."""

    def __init__(
        self, request: ResponsesRequest, response_id: str | None = None, created_at: int | None = None
    ) -> None:
        self.request = request
        self.response = response_skeleton(
            request,
            response_id or new_id("resp"),
            created_at if created_at is not None else int(time.time()),
            request.model,
        )
        self._sequence = 0
        self._output: list[dict[str, Any]] = []
        self._text_index: int | None = None  # output index of the open message item
        self._text: list[str] = []
        self._calls: dict[int, _OpenCall] = {}  # chat tool_calls index -> its open item
        self._arguments: dict[int, list[str]] = {}
        self.finish_reason: str | None = None
        self.chat_usage: dict[str, Any] | None = None
        self.ended = False

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.response))  # a copy: later events must not change it

    def start(self) -> list[dict[str, Any]]:
        return [
            self._event("response.created", response=self._snapshot()),
            self._event("response.in_progress", response=self._snapshot()),
        ]

    # -- items
    def _open_text(self) -> list[dict[str, Any]]:
        self._text_index = len(self._output)
        item = message_item(new_id("msg"), "", status="in_progress")
        item["content"] = []
        self._output.append(item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event("response.output_item.added", output_index=self._text_index, item=dict(item)),
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self._text_index,
                content_index=0,
                part=part,
            ),
        ]

    def _close_text(self) -> list[dict[str, Any]]:
        if self._text_index is None:
            return []
        index, self._text_index = self._text_index, None
        text = "".join(self._text)
        self._text = []
        item = self._output[index]
        item.update(message_item(item["id"], text))
        part = item["content"][0]
        return [
            self._event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            self._event(
                "response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _close_calls(self) -> list[dict[str, Any]]:
        events = []
        for position in sorted(self._calls):
            call = self._calls[position]
            arguments = "".join(self._arguments.get(position, []))
            call.item.update(arguments=arguments, status="completed")
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=call.item["id"],
                    output_index=call.output_index,
                    name=call.item["name"],
                    arguments=arguments,
                )
            )
            events.append(self._event("response.output_item.done", output_index=call.output_index, item=call.item))
        self._calls = {}
        return events

    def _tool_call_delta(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        index = delta.get("index")
        position = index if isinstance(index, int) else len(self._calls)
        function = _dict(delta.get("function"))
        if position not in self._calls:
            events += self._close_text()
            item = function_call_item(
                new_id("fc"),
                str(delta.get("id") or new_id("call")),
                self.request.call_names(str(function.get("name") or "")),
                "",
                status="in_progress",
            )
            self._calls[position] = _OpenCall(len(self._output), item)
            self._output.append(item)
            events.append(
                self._event("response.output_item.added", output_index=len(self._output) - 1, item=dict(item))
            )
        call = self._calls[position]
        if function.get("name") and not call.item["name"]:
            call.item.update(self.request.call_names(str(function["name"])))
        piece = function.get("arguments")
        if isinstance(piece, str) and piece:
            self._arguments.setdefault(position, []).append(piece)
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.item["id"],
                    output_index=call.output_index,
                    delta=piece,
                )
            )
        return events

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events for one chat chunk."""
        events: list[dict[str, Any]] = []
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.response["model"] = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.chat_usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = _dict(choice.get("delta"))
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._text_index is None:
                    events += self._open_text()
                self._text.append(text)
                item_id = self._output[self._text_index]["id"]  # type: ignore[index]
                events.append(
                    self._event(
                        "response.output_text.delta",
                        item_id=item_id,
                        output_index=self._text_index,
                        content_index=0,
                        delta=text,
                        logprobs=[],
                    )
                )
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    events += self._tool_call_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return events

    def complete(self, settled: Any = None) -> list[dict[str, Any]]:
        """The closing events once the chat stream ended with ``[DONE]``."""
        events = self._close_text() + self._close_calls()
        if not self._output:  # an empty answer is still one (empty) message
            events += self._open_text() + self._close_text()
        status, incomplete = status_of(self.finish_reason)
        self.response.update(
            status=status, incomplete_details=incomplete, output=self._output, usage=usage_of(self.chat_usage, settled)
        )
        self.ended = True
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return [*events, self._event(kind, response=self._snapshot())]

    def fail(self, error: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of a stream broken after it started (the chat stream's error event)."""
        code = error.get("code") if isinstance(error.get("code"), str) else "upstream_error"
        message = str(error.get("message") or "The upstream stream failed.")
        self.response.update(status="failed", output=self._output, error={"code": code, "message": message})
        self.ended = True
        return [
            self._event("error", code=code, message=message, param=None),
            self._event("response.failed", response=self._snapshot()),
        ]


# ---------------------------------------------------------------------------------------------
# Running a request through the gateway
# ---------------------------------------------------------------------------------------------


def _responses_error(error: GatewayError) -> GatewayError:
    """Errors of the chat pipeline named in the caller's terms (the output cap is max_output_tokens)."""
    if error.param in ("max_tokens", "max_completion_tokens"):
        error.param = "max_output_tokens"
    error.message = error.message.replace("max_completion_tokens", "max_output_tokens").replace(
        "max_tokens", "max_output_tokens"
    )
    return error


class ResponsesStream:
    """A streamed response: the Responses events of one admitted chat stream. Same interface as
    :class:`ChatResponse` for the web layer (``body``, ``headers``, ``finish``): the quota is
    settled before the last event is sent, and on every other ending by ``finish``."""

    def __init__(self, request: ResponsesRequest, chat: ChatResponse) -> None:
        self.request = request
        self._chat = chat
        self.translator = ResponsesStreamTranslator(request, new_id("resp"))

    @property
    def headers(self) -> dict[str, str]:
        return {**self._chat.headers, **wire.dropped_header(self.request.dropped)}

    async def finish(self, client_status: int | None = None) -> None:
        await self._chat.finish(client_status)

    async def body(self) -> AsyncIterator[bytes]:
        translator = self.translator
        for event in translator.start():
            yield sse(event)
        buffer = bytearray()
        async for data in self._chat.body():
            buffer.extend(data)
            for chat_event in parse_sse_events(buffer):
                for out in await self._translate(chat_event):
                    yield out
                if translator.ended:
                    return
        if not translator.ended:  # the chat body always ends with [DONE] or an error event
            for failed in translator.fail(
                {"code": "upstream_stream_interrupted", "message": "The upstream provider ended the stream early."}
            ):
                yield sse(failed)

    async def _translate(self, event: SSEEvent) -> list[bytes]:
        translator = self.translator
        if event.done:
            await self._chat.finish(200)  # settle before the client hears the end
            return [sse(e) for e in translator.complete(self._chat.outcome.usage)]
        if event.data is None:
            return [event.raw] if event.raw.startswith(b":") else []  # keep-alive comments pass through
        if isinstance(event.data.get("error"), dict):
            return [sse(e) for e in translator.fail(event.data["error"])]
        return [sse(e) for e in translator.feed(event.data)]


@dataclass
class ResponsesResult:
    """The outcome of :func:`create_response`: a JSON body or a stream, and the headers."""

    json: dict[str, Any] | None
    stream: ResponsesStream | None
    headers: dict[str, str]


async def create_response(gateway: Gateway, identity: Identity, raw: bytes, request_id: str) -> ResponsesResult:
    """Validate, translate, and run a Responses request through the chat pipeline. Raises
    GatewayError (OpenAI-shaped; nothing reserved, or the reservation already settled)."""
    request = parse_responses_request(raw, gateway.max_body_bytes, gateway.refuses_unknown_fields)
    try:
        chat = await gateway.chat(identity, json.dumps(request.chat_body).encode(), request_id)
    except GatewayError as error:
        raise _responses_error(error) from None
    headers = {**chat.headers, **wire.dropped_header(request.dropped)}
    if request.stream:
        stream = ResponsesStream(request, chat)
        return ResponsesResult(None, stream, stream.headers)
    try:
        completion = chat.json or {}
        await chat.finish(200)
        body = response_object(request, completion, chat.outcome.usage)
    finally:
        await chat.finish(200)  # a no-op when already settled
    return ResponsesResult(body, None, headers)
