"""The Anthropic Messages API in: ``POST /v1/messages`` (streamed and not) and
``POST /v1/messages/count_tokens``, so the ``anthropic`` SDK works by changing only its base URL.

This module is a translation and nothing else. A Messages request is validated strictly (a 400
``invalid_request_error`` before anything is reserved), becomes an OpenAI chat completion request,
and goes through the gateway's one request pipeline (:meth:`Gateway.chat`: identity → limits →
route → breaker → reserve, failover, metering, settlement). The answer comes back as an Anthropic
``message`` or as Anthropic's SSE events.

Messages → chat:

- ``system`` (a string or text blocks) → one leading ``system`` message;
- ``user`` / ``assistant`` turns; content blocks ``text``; ``image`` (base64 → ``data:`` URL,
  url → url) and ``document`` (base64 PDF → an inline ``file`` part; plain-text source → text);
  assistant ``tool_use`` → ``tool_calls``; user ``tool_result`` → ``tool`` messages (placed before
  the rest of that user turn; ``is_error`` prefixes the result with ``Error:``; images inside a result
  follow as user image parts); assistant ``thinking`` / ``redacted_thinking`` blocks are dropped;
- ``max_tokens`` (required) → ``max_tokens``; ``stop_sequences`` → ``stop``; ``temperature``,
  ``top_p`` as they are; ``metadata.user_id`` → ``user``; ``tools`` → function tools (``input_schema``
  → ``parameters``); ``tool_choice`` auto/any/tool/none → auto/required/function/none and
  ``disable_parallel_tool_use`` → ``parallel_tool_calls: false``;
- ``output_config.format`` (``json_schema``) → ``response_format`` ``json_schema``;
- accepted (validated) and not forwarded: ``top_k`` (OpenAI-compatible APIs have no equivalent),
  ``thinking``, ``output_config.effort``, ``service_tier``, ``speed``, ``inference_geo``,
  ``diagnostics`` and ``cache_control`` markers; ``container`` (server-side state) is a 400.

Chat → Messages: text → a ``text`` block, ``tool_calls`` → ``tool_use`` blocks (arguments parsed
into ``input``); ``finish_reason`` stop → ``end_turn`` (or ``stop_sequence`` when the target
names the stop sequence that matched, as vLLM does in ``choices[].stop_reason``), length →
``max_tokens``, tool_calls → ``tool_use``, content_filter → ``refusal``. ``usage`` is what the
gateway settled for the request: ``input_tokens`` = the prompt tokens it charged (cache reads and
writes included), ``output_tokens`` = the output tokens it charged.

Streams: ``message_start`` (its ``usage`` is zero: the counts are known when the upstream has
finished), ``content_block_start`` / ``content_block_delta`` (``text_delta``, ``input_json_delta``) /
``content_block_stop`` per block, ``message_delta`` with the stop reason and the final cumulative
usage (``input_tokens`` and ``output_tokens``, as settled), ``message_stop``; the gateway's
keep-alives become ``ping`` events, and a failure after the first byte ends the stream with an
``event: error``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from quotagate import wire
from quotagate.errors import GatewayError, invalid_request
from quotagate.logic.chat_request import parse_model_request
from quotagate.providers.anthropic import PASSTHROUGH_FIELDS
from quotagate.wire import messages as wire_messages
from quotagate.wire.betas import DROPPED_BETAS_HEADER
from quotagate.wire.schema import TargetType, WireError, project

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from quotagate.config import GatewayConfig, Target
    from quotagate.identity import Identity
    from quotagate.logic.estimate import RequestCost
    from quotagate.logic.gateway import Gateway
    from quotagate.logic.metering import Usage
    from quotagate.wire.schema import Obj

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
# count_tokens reserves nothing and calls no model: every byte it parses is free gateway CPU (4.1 MB
# cost about 1 s). 1 MiB still holds a 200k-token conversation.
COUNT_TOKENS_MAX_BODY_BYTES = 1024 * 1024
VERSION_HEADER = "anthropic-version"
# The anthropic SDK reads this header into ``_request_id``.
REQUEST_ID_HEADER = "request-id"

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]
Role = Literal["user", "assistant"]

# The HTTP status of a gateway error → Anthropic's error ``type`` for it (the anthropic SDK picks its
# exception class from the status; the type is what a program reads).
ERROR_TYPES: dict[int, ErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# OpenAI ``finish_reason`` → Anthropic ``stop_reason``.
STOP_REASONS: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_BLOCK_FIELDS: dict[str, frozenset[str]] = {
    "text": frozenset({"type", "text", "cache_control", "citations"}),
    "image": frozenset({"type", "source", "cache_control"}),
    "document": frozenset({"type", "source", "cache_control", "title", "context", "citations"}),
    "tool_use": frozenset({"type", "id", "name", "input", "cache_control"}),
    "tool_result": frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"}),
    "thinking": frozenset({"type", "thinking", "signature"}),
    "redacted_thinking": frozenset({"type", "data"}),
}
_BLOCKS_BY_ROLE: dict[str, frozenset[str]] = {
    "user": frozenset({"text", "image", "document", "tool_result"}),
    "assistant": frozenset({"text", "tool_use", "thinking", "redacted_thinking"}),
    "system": frozenset({"text"}),  # mid-conversation system turns (Claude Code)
}
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TOOL_CHOICES = ("auto", "any", "tool", "none")
_SERVICE_TIERS = ("auto", "standard_only")


def is_messages_path(path: str) -> bool:
    """Whether a request path speaks the Messages protocol (errors are rendered in its shape)."""
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def error_type_for(status: int) -> ErrorType:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(error: GatewayError) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}`` for a gateway error."""
    return {"type": "error", "error": {"type": error_type_for(error.status), "message": error.message}}


def _bad(where: str, problem: str) -> GatewayError:
    return invalid_request(f"{where}: {problem}", param=where, code="invalid_value")


# ---------------------------------------------------------------------------------------------
# Request: validation and translation to an OpenAI chat completion request
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessagesRequest:
    model: str
    stream: bool
    stop_sequences: tuple[str, ...]
    chat_body: dict[str, Any]  # the OpenAI chat completion request this request becomes
    body: dict[str, Any] = field(default_factory=dict)  # as validated (unknown fields removed)
    max_tokens: int | None = None
    dropped: tuple[str, ...] = ()  # the paths of the fields removed (named in a response header)
    betas: tuple[str, ...] = ()  # the client's allow-listed anthropic-beta values (sent to Anthropic)
    dropped_betas: tuple[str, ...] = ()  # its other anthropic-beta values (never sent)

    @property
    def dropped_headers(self) -> dict[str, str]:
        """The response headers that name what the gateway did not send."""
        headers = wire.dropped_header(self.dropped)
        if self.dropped_betas:
            headers[DROPPED_BETAS_HEADER] = ", ".join(wire.header_safe(b) for b in self.dropped_betas)
        return headers


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_cache_control(block: dict[str, Any], where: str) -> None:
    marker = block.get("cache_control")
    if marker is None:
        return
    if (
        not isinstance(marker, dict)
        or marker.get("type") != "ephemeral"
        or marker.get("ttl", "5m") not in ("5m", "1h")
        or set(marker) - {"type", "ttl"}
    ):
        raise _bad(
            f"{where}.cache_control" if where else "cache_control",
            'must be {"type": "ephemeral"} with an optional ttl of 5m or 1h',
        )


def _source(block: dict[str, Any], where: str, media_types: tuple[str, ...]) -> dict[str, Any]:
    source = block.get("source")
    here = f"{where}.source"
    if not isinstance(source, dict):
        raise _bad(here, "Field required (an object)")
    kind = source.get("type")
    if kind == "base64":
        if source.get("media_type") not in media_types:
            raise _bad(f"{here}.media_type", f"Input should be one of {', '.join(media_types)}")
        if not isinstance(source.get("data"), str) or not source["data"]:
            raise _bad(f"{here}.data", "Field required (base64 data)")
        return source
    if kind == "url" and isinstance(source.get("url"), str) and source["url"].startswith(("https://", "http://")):
        return source
    if kind == "text" and block.get("type") == "document" and isinstance(source.get("data"), str):
        return source
    raise _bad(f"{here}.type", "a base64 or url source is required")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(where, "text content blocks must be non-empty strings")
    return value


def _tool_result_content(content: Any, where: str) -> list[dict[str, Any]]:
    """The blocks of a tool result (a string is one text block)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(where, "Input should be a valid string or list of content blocks")
    blocks = []
    for i, block in enumerate(content):
        here = f"{where}.{i}"
        if not isinstance(block, dict) or block.get("type") not in ("text", "image"):
            raise _bad(f"{here}.type", "tool result content blocks must be text or image")
        _check_cache_control(block, here)
        if block["type"] == "text":
            _text(block.get("text"), f"{here}.text")
        else:
            _source(block, here, _IMAGE_TYPES)
        blocks.append(block)
    return blocks


def _check_text_block(block: dict[str, Any], where: str) -> None:
    _text(block.get("text"), f"{where}.text")


def _check_image_block(block: dict[str, Any], where: str) -> None:
    _source(block, where, _IMAGE_TYPES)


def _check_document_block(block: dict[str, Any], where: str) -> None:
    source = _source(block, where, ("application/pdf",))
    if source["type"] == "url":
        raise _bad(f"{where}.source.type", "documents must be given inline (base64 PDF or text)")


def _check_tool_use_block(block: dict[str, Any], where: str) -> None:
    if not isinstance(block.get("id"), str) or not block["id"]:
        raise _bad(f"{where}.id", "Field required")
    if not isinstance(block.get("name"), str) or not _TOOL_NAME.match(block["name"]):
        raise _bad(f"{where}.name", "must match ^[a-zA-Z0-9_-]{1,64}$")
    if not isinstance(block.get("input"), dict):
        raise _bad(f"{where}.input", "Input should be a valid dictionary")


def _check_tool_result_block(block: dict[str, Any], where: str) -> None:
    if not isinstance(block.get("tool_use_id"), str) or not block["tool_use_id"]:
        raise _bad(f"{where}.tool_use_id", "Field required")
    if "is_error" in block and not isinstance(block["is_error"], bool):
        raise _bad(f"{where}.is_error", "Input should be a valid boolean")
    _tool_result_content(block.get("content"), f"{where}.content")


def _check_thinking_block(block: dict[str, Any], where: str) -> None:
    if not isinstance(block.get("thinking"), str) or not isinstance(block.get("signature"), str):
        raise _bad(where, "thinking blocks need thinking and signature strings")


def _check_redacted_thinking_block(block: dict[str, Any], where: str) -> None:
    if not isinstance(block.get("data"), str):
        raise _bad(f"{where}.data", "Field required")


# The checks of each content block type (beyond its fields and cache_control marker).
_BLOCK_CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "text": _check_text_block,
    "image": _check_image_block,
    "document": _check_document_block,
    "tool_use": _check_tool_use_block,
    "tool_result": _check_tool_result_block,
    "thinking": _check_thinking_block,
    "redacted_thinking": _check_redacted_thinking_block,
}


def _validate_block(block: Any, role: str, where: str) -> dict[str, Any]:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _bad(where, "each content block must be an object with a type")
    kind = block["type"]
    if kind not in _BLOCK_FIELDS:
        raise _bad(f"{where}.type", f"content block type {kind!r} is not supported by this gateway")
    if kind not in _BLOCKS_BY_ROLE[role]:
        raise _bad(f"{where}.type", f"{kind} blocks are not allowed in {role} messages")
    if kind not in ("thinking", "redacted_thinking"):
        _check_cache_control(block, where)
    _BLOCK_CHECKS[kind](block, where)
    return block


def _validate_messages(messages: Any) -> list[tuple[str, list[dict[str, Any]]]]:
    """(role, blocks) of every message; a string content is one text block."""
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "at least one message is required")
    turns = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise _bad(where, "Input should be an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in _BLOCKS_BY_ROLE:
            raise _bad(f"{where}.role", "Input should be 'user', 'assistant' or 'system'")
        content = message.get("content")
        final_assistant = role == "assistant" and i == len(messages) - 1
        if isinstance(content, str):
            blocks = [{"type": "text", "text": content}] if content else []
        elif isinstance(content, list):
            blocks = [_validate_block(block, role, f"{where}.content.{j}") for j, block in enumerate(content)]
        else:
            raise _bad(f"{where}.content", "Input should be a valid string or list of content blocks")
        if not blocks and not final_assistant:
            raise _bad(
                where, "all messages must have non-empty content except for the optional final assistant message"
            )
        turns.append((role, blocks))
    if all(role == "system" for role, _ in turns):
        raise _bad("messages", "at least one user or assistant message is required")
    return turns


def _system_text(system: Any) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise _bad("system", "Input should be a valid string or list of text blocks")
    texts = []
    for i, block in enumerate(system):
        where = f"system.{i}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"{where}.type", "system blocks must be text blocks")
        _check_cache_control(block, where)
        texts.append(_text(block.get("text"), f"{where}.text"))
    return "\n\n".join(texts)


def _validate_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("tools", "Input should be a valid list")
    names = set()
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise _bad(where, "Input should be an object")
        if tool.get("type", "custom") != "custom":
            raise _bad(
                f"{where}.type",
                f"server tool {tool.get('type')!r} is not supported by this gateway; "
                "define client tools with name and input_schema",
            )
        _check_cache_control(tool, where)
        if not isinstance(tool.get("name"), str) or not _TOOL_NAME.match(tool["name"]):
            raise _bad(f"{where}.name", "must match ^[a-zA-Z0-9_-]{1,64}$")
        if tool["name"] in names:
            raise _bad(f"{where}.name", "tool names must be unique")
        names.add(tool["name"])
        if "description" in tool and not isinstance(tool["description"], str):
            raise _bad(f"{where}.description", "Input should be a valid string")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise _bad(f"{where}.input_schema", 'must be a JSON schema object with "type": "object"')
    return tools


def _validate_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICES:
        raise _bad("tool_choice", "Input tag does not match any of 'auto', 'any', 'tool', 'none'")
    if "disable_parallel_tool_use" in choice and not isinstance(choice["disable_parallel_tool_use"], bool):
        raise _bad("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")
    if choice["type"] == "tool" and choice.get("name") not in {t["name"] for t in tools}:
        raise _bad("tool_choice.name", f"tool {choice.get('name')!r} is not one of the request's tools")
    return choice


_THINKING_FIELDS: dict[str, frozenset[str]] = {
    "enabled": frozenset({"type", "budget_tokens"}),
    "disabled": frozenset({"type"}),
    "adaptive": frozenset({"type", "display"}),
    "between_tools": frozenset({"type"}),
}
_EFFORTS = ("low", "medium", "high", "xhigh", "max")


def _validate_thinking(thinking: Any, max_tokens: int | None) -> None:
    if thinking is None:
        return
    if not isinstance(thinking, dict) or thinking.get("type") not in _THINKING_FIELDS:
        raise _bad("thinking.type", f"Input should be one of {', '.join(map(repr, _THINKING_FIELDS))}")
    if thinking["type"] != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1024:
        raise _bad("thinking.budget_tokens", "Input should be an integer of at least 1024")
    if max_tokens is not None and budget >= max_tokens:
        raise _bad("thinking.budget_tokens", "must be less than max_tokens")


def _validate_sampling(body: dict[str, Any]) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not _is_number(value) or not 0 <= value <= 1):
            raise _bad(name, "Input should be a number from 0 to 1")
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise _bad("top_k", "Input should be a non-negative integer")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("metadata", "Input should be an object")
        user_id = metadata.get("user_id")
        if user_id is not None and (not isinstance(user_id, str) or len(user_id) > 256):
            raise _bad("metadata.user_id", "Input should be a string of at most 256 characters")
    if body.get("service_tier") is not None and body["service_tier"] not in _SERVICE_TIERS:
        raise _bad("service_tier", "Input should be 'auto' or 'standard_only'")
    if body.get("speed") is not None and body["speed"] not in ("standard", "fast"):
        raise _bad("speed", "Input should be 'standard' or 'fast'")
    if body.get("inference_geo") is not None and not isinstance(body["inference_geo"], str):
        raise _bad("inference_geo", "Input should be a valid string")
    if body.get("diagnostics") is not None and not isinstance(body["diagnostics"], dict):
        raise _bad("diagnostics", "Input should be an object")
    if body.get("container") is not None:
        raise _bad(
            "container", "server-side containers are not supported: this gateway keeps no state between requests"
        )
    _check_cache_control(body, "")


def _response_format(output_config: Any) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` for ``output_config.format`` (``effort`` is not forwarded)."""
    if output_config is None:
        return None
    if not isinstance(output_config, dict):
        raise _bad("output_config", "Input should be an object")
    if output_config.get("effort") not in (None, *_EFFORTS):
        raise _bad("output_config.effort", f"Input should be one of {', '.join(_EFFORTS)}")
    output_format = output_config.get("format")
    if output_format is None:
        return None
    if (
        not isinstance(output_format, dict)
        or output_format.get("type") != "json_schema"
        or not isinstance(output_format.get("schema"), dict)
    ):
        raise _bad("output_config.format", 'must be {"type": "json_schema", "schema": {...}}')
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": output_format["schema"]}}


def _stop_sequences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) and s.strip() for s in value):
        raise _bad("stop_sequences", "each stop sequence must be a string containing non-whitespace")
    return tuple(value)


def _image_part(source: dict[str, Any]) -> dict[str, Any]:
    url = source["url"] if source["type"] == "url" else f"data:{source['media_type']};base64,{source['data']}"
    return {"type": "image_url", "image_url": {"url": url}}


def _user_part(block: dict[str, Any]) -> dict[str, Any]:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        return _image_part(block["source"])
    source = block["source"]  # a document
    if source["type"] == "text":
        return {"type": "text", "text": source["data"]}
    return {
        "type": "file",
        "file": {
            "filename": f"{block.get('title') or 'document'}.pdf",
            "file_data": f"data:application/pdf;base64,{source['data']}",
        },
    }


def _tool_message(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``tool`` message of a tool result, and the image parts it carried (OpenAI tool messages
    hold text only; the images follow in the user turn)."""
    content = _tool_result_content(block.get("content"), "")
    text = "\n".join(b["text"] for b in content if b["type"] == "text")
    if block.get("is_error"):
        text = f"Error: {text}" if text else "Error"
    images = [_image_part(b["source"]) for b in content if b["type"] == "image"]
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}, images


def _assistant_message(blocks: list[dict[str, Any]]) -> dict[str, Any] | None:
    text = "".join(b["text"] for b in blocks if b["type"] == "text")
    calls = [
        {
            "id": b["id"],
            "type": "function",
            "function": {
                "name": b["name"],
                "arguments": json.dumps(b["input"], separators=(",", ":"), ensure_ascii=False),
            },
        }
        for b in blocks
        if b["type"] == "tool_use"
    ]
    if not text and not calls:
        return None  # only thinking blocks (not forwarded), or an empty final prefill
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _chat_messages(system: str, turns: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for role, blocks in turns:
        if role == "system":  # a mid-conversation system turn: a system message in place
            out.append({"role": "system", "content": "\n\n".join(b["text"] for b in blocks)})
            continue
        if role == "assistant":
            message = _assistant_message(blocks)
            if message is not None:
                out.append(message)
            continue
        result_images: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        for block in blocks:
            if block["type"] == "tool_result":
                tool_message, images = _tool_message(block)
                out.append(tool_message)  # tool messages answer the assistant's calls directly
                result_images.extend(images)
            else:
                parts.append(_user_part(block))
        parts = result_images + parts
        if len(parts) == 1 and parts[0]["type"] == "text":
            out.append({"role": "user", "content": parts[0]["text"]})
        elif parts:
            out.append({"role": "user", "content": parts})
    return out


def _chat_tools(tools: list[dict[str, Any]], choice: dict[str, Any] | None) -> dict[str, Any]:
    if not tools:
        return {}  # a tool_choice without tools means nothing to an OpenAI-compatible API
    fields: dict[str, Any] = {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "parameters": t["input_schema"],
                },
            }
            for t in tools
        ]
    }
    if choice is not None:
        kind = choice["type"]
        fields["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or {
            "type": "function",
            "function": {"name": choice.get("name")},
        }
        if choice.get("disable_parallel_tool_use") and kind != "none":
            fields["parallel_tool_calls"] = False
    return fields


def _parse(
    raw: bytes,
    max_bytes: int,
    declaration: Obj,
    max_tokens_required: bool,
    refuses_unknown: Callable[[str], bool] | None,
) -> MessagesRequest:
    body, model = parse_model_request(raw, max_bytes)
    try:
        dropped = wire.check_body(declaration, body, refuses_unknown is not None and refuses_unknown(model))
    except WireError as error:
        raise _bad(error.path, error.problem) from None
    max_tokens = body.get("max_tokens")
    if max_tokens_required and max_tokens is None:
        raise _bad("max_tokens", "Field required")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise _bad("max_tokens", "Input should be an integer of at least 1")
    system = _system_text(body.get("system"))
    turns = _validate_messages(body.get("messages"))
    tools = _validate_tools(body.get("tools"))
    choice = _validate_tool_choice(body.get("tool_choice"), tools)
    _validate_thinking(body.get("thinking"), max_tokens)
    _validate_sampling(body)
    response_format = _response_format(body.get("output_config"))
    stop_sequences = _stop_sequences(body.get("stop_sequences"))
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "Input should be a valid boolean")

    chat: dict[str, Any] = {"model": model, "messages": _chat_messages(system, turns)}
    if max_tokens is not None:
        chat["max_tokens"] = max_tokens
    if stream:
        # The usage chunk is always asked for: message_delta reports the final counts.
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if stop_sequences:
        chat["stop"] = list(stop_sequences)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    user_id = (body.get("metadata") or {}).get("user_id")
    if user_id:
        chat["user"] = user_id
    chat.update(_chat_tools(tools, choice))
    if response_format is not None:
        chat["response_format"] = response_format
    for name in PASSTHROUGH_FIELDS:  # the mock model server's test fields, as chat passes them
        if name in body:
            chat[name] = body[name]
    return MessagesRequest(
        model=model,
        stream=bool(stream),
        stop_sequences=stop_sequences,
        chat_body=chat,
        body=body,
        max_tokens=max_tokens,
        dropped=tuple(dropped),
    )


def _as_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content)


def _fold_system_turns(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(messages without ``system`` turns, text blocks left for the top-level system prompt). Each
    system turn's text joins the next user turn (after its tool results, which must come first), or
    the previous one when none follows: the cached prefix before it stays the same."""
    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "system":
            pending += [{"type": "text", "text": b["text"]} for b in _as_blocks(message["content"])]
            continue
        if message["role"] == "user" and pending:
            blocks = _as_blocks(message["content"])
            results = [b for b in blocks if b.get("type") == "tool_result"]
            message = {**message, "content": results + pending + [b for b in blocks if b.get("type") != "tool_result"]}
            pending = []
        out.append(message)
    if pending:
        last_user = next((i for i in range(len(out) - 1, -1, -1) if out[i]["role"] == "user"), None)
        if last_user is not None:
            out[last_user] = {**out[last_user], "content": _as_blocks(out[last_user]["content"]) + pending}
            pending = []
    return out, pending


def anthropic_body(request: MessagesRequest) -> dict[str, Any]:
    """The body an Anthropic target gets: the client's, without what the declaration drops for
    Anthropic, and mid-conversation system turns folded into user turns (the Messages API takes a
    ``system`` role only with a beta, and only on some models)."""
    body: dict[str, Any] = project(wire_messages.MESSAGES, request.body, TargetType.ANTHROPIC)
    if any(m.get("role") == "system" for m in body["messages"]):
        body["messages"], leftover = _fold_system_turns(body["messages"])
        if leftover:
            system = body.get("system")
            body["system"] = _as_blocks(system) + leftover if system else leftover
    return body


def parse_messages_request(
    raw: bytes, max_bytes: int, refuses_unknown: Callable[[str], bool] | None = None
) -> MessagesRequest:
    """A validated ``POST /v1/messages`` body; GatewayError 400/413 otherwise."""
    return _parse(raw, max_bytes, wire_messages.MESSAGES, True, refuses_unknown)


def parse_count_tokens_request(
    raw: bytes, max_bytes: int, refuses_unknown: Callable[[str], bool] | None = None
) -> MessagesRequest:
    """A validated ``POST /v1/messages/count_tokens`` body (no ``max_tokens``, no sampling)."""
    return _parse(raw, max_bytes, wire_messages.COUNT_TOKENS, False, refuses_unknown)


# ---------------------------------------------------------------------------------------------
# Answer: chat completion → message
# ---------------------------------------------------------------------------------------------


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def stop_reason(finish_reason: Any, matched: Any, stop_sequences: tuple[str, ...]) -> tuple[StopReason, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for an OpenAI finish reason; ``matched`` is
    the stop sequence a target said it stopped at (vLLM's ``choices[].stop_reason``), if any."""
    if finish_reason == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return STOP_REASONS.get(str(finish_reason), "end_turn"), None


def usage_of(usage: Usage | None) -> dict[str, int]:
    prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (0, 0)
    return {
        "input_tokens": prompt,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": completion,
    }


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's ``input`` from OpenAI ``arguments`` (a JSON string; ``{}`` if it is not an object)."""
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def to_message(
    completion: dict[str, Any], usage: Usage | None, stop_sequences: tuple[str, ...], model: str
) -> dict[str, Any]:
    """The Anthropic ``message`` of an OpenAI chat completion, with the settled ``usage``."""
    choices = completion.get("choices") or [{}]
    choice = _obj(choices[0])
    reply = _obj(choice.get("message"))
    content: list[dict[str, Any]] = []
    if isinstance(reply.get("content"), str) and reply["content"]:
        content.append({"type": "text", "text": reply["content"]})
    for call in reply.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": function.get("name") or "",
                    "input": tool_input(function.get("arguments")),
                }
            )
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), stop_sequences)
    upstream_id = completion.get("id")
    return {
        "id": upstream_id if isinstance(upstream_id, str) and upstream_id.startswith("msg_") else message_id(),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model") or model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_of(usage),
    }


# ---------------------------------------------------------------------------------------------
# Answer: chat chunks → Messages SSE events
# ---------------------------------------------------------------------------------------------


def sse(event: dict[str, Any]) -> bytes:
    return (
        b"event: "
        + event["type"].encode()
        + b"\ndata: "
        + json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        + b"\n\n"
    )


PING = sse({"type": "ping"})


@dataclass
class _Block:
    index: int
    kind: Literal["text", "tool_use"]


@dataclass
class MessageEvents:
    """Turns the OpenAI chunks of one streamed completion into Anthropic events (pure)."""

    model: str
    stop_sequences: tuple[str, ...] = ()
    id: str = field(default_factory=message_id)
    _open: _Block | None = None
    _blocks: int = 0
    _tool_blocks: dict[int, int] = field(default_factory=dict)  # OpenAI tool_calls index -> block index
    _finish: Any = None
    _matched: Any = None

    def start(self) -> bytes:
        return sse(
            {
                "type": "message_start",
                "message": {
                    "id": self.id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": usage_of(None),
                },
            }
        )

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        index, self._open = self._open.index, None
        return [sse({"type": "content_block_stop", "index": index})]

    def _begin(self, kind: Literal["text", "tool_use"], block: dict[str, Any]) -> list[bytes]:
        events = self._close()
        self._open = _Block(self._blocks, kind)
        self._blocks += 1
        events.append(sse({"type": "content_block_start", "index": self._open.index, "content_block": block}))
        return events

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = _obj(choice.get("delta"))
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._open is None or self._open.kind != "text":
                    events += self._begin("text", {"type": "text", "text": ""})
                assert self._open is not None
                events.append(
                    sse(
                        {
                            "type": "content_block_delta",
                            "index": self._open.index,
                            "delta": {"type": "text_delta", "text": text},
                        }
                    )
                )
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish, self._matched = choice["finish_reason"], choice.get("stop_reason")
        return events

    def _tool_call(self, call: Any) -> list[bytes]:
        if not isinstance(call, dict):
            return []
        position = call.get("index", 0)
        function = _obj(call.get("function"))
        events: list[bytes] = []
        if position not in self._tool_blocks:
            call_id = call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}"
            events += self._begin(
                "tool_use", {"type": "tool_use", "id": call_id, "name": function.get("name") or "", "input": {}}
            )
            assert self._open is not None
            self._tool_blocks[position] = self._open.index
        piece = function.get("arguments")
        if isinstance(piece, str) and piece:
            events.append(
                sse(
                    {
                        "type": "content_block_delta",
                        "index": self._tool_blocks[position],
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    }
                )
            )
        return events

    def finish(self, usage: Usage | None, cut: bool = False) -> list[bytes]:
        """The closing events: the open block's stop, message_delta (final usage), message_stop;
        ``cut``: the gateway ended the answer (``max_tokens``)."""
        reason, sequence = stop_reason("length" if cut else self._finish, self._matched, self.stop_sequences)
        return [
            *self._close(),
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": usage_of(usage),
                }
            ),
            sse({"type": "message_stop"}),
        ]


def error_event(error: Any) -> bytes:
    """An ``event: error`` for an OpenAI-style error event of the gateway's stream."""
    error = error if isinstance(error, dict) else {}
    kind: ErrorType = (
        "timeout_error"
        if error.get("type") == "timeout"
        else ("overloaded_error" if error.get("code") == "upstream_overloaded" else "api_error")
    )
    return sse({"type": "error", "error": {"type": kind, "message": str(error.get("message") or "stream error")}})


# ---------------------------------------------------------------------------------------------
# The endpoints' core (the proxy app is a thin shell around these)
# ---------------------------------------------------------------------------------------------


def request_cost(request: MessagesRequest) -> RequestCost:
    """What the request can cost on any target: the Messages body as an Anthropic target bills it,
    or its chat translation as the others do, whichever is more (an upper bound for both)."""
    from quotagate.logic import estimate

    return estimate.measure_messages(request.body).upper_bound(estimate.measure(request.chat_body))


def input_tokens_estimate(config: GatewayConfig, targets: Sequence[Target], request: MessagesRequest) -> int:
    """What the gateway reserves for the prompt of this request (:func:`request_cost`: text, tools,
    images, documents, each target in its own tokens), for the most expensive of the model's
    targets: an upper bound, not the provider's own count."""
    cost = request_cost(request)
    return max(cost.prompt_tokens(config.providers[target.provider], target) for target in targets)


async def count_tokens(gateway: Gateway, identity: Identity, raw: bytes) -> tuple[dict[str, int], dict[str, str]]:
    """``{"input_tokens": N}``: the gateway's estimate for the model's targets, and the headers that
    name the fields it dropped. Costs nothing (no reservation, no upstream call); the key must be
    allowed to call the model."""
    from anyio import to_thread

    limit = min(gateway.max_body_bytes, COUNT_TOKENS_MAX_BODY_BYTES)
    request = parse_count_tokens_request(raw, limit, gateway.refuses_unknown_fields)
    limits = await to_thread.run_sync(gateway.limits_for, identity)
    resolution = gateway.resolve(request.model, limits)
    config = gateway.config
    count = await to_thread.run_sync(lambda: input_tokens_estimate(config, resolution.targets, request))
    return {"input_tokens": count}, request.dropped_headers
