"""The Anthropic Messages API's fields: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Sources: the anthropic SDK's ``types/message_create_params.py`` and ``types/beta/*`` (2.14), and what
Claude Code 2.1 sends (``context_management``, mid-conversation ``role: "system"`` turns, adaptive
``thinking``, ``output_config.effort``, ``cache_control``); the AI SDK adds ``eager_input_streaming``.

Anthropic targets get the client's body (only the fields forwarded there); OpenAI-compatible and
Bedrock targets get its chat translation (:mod:`quotagate.protocols.anthropic_messages`).
"""

from __future__ import annotations

from typing import Final

from quotagate.wire.schema import (
    FORWARDED,
    TRANSLATED,
    Action,
    Array,
    Bool,
    Disposition,
    Field,
    Int,
    Json,
    Num,
    Obj,
    OneOf,
    Str,
    Tagged,
    Targets,
    drop,
    dropped,
    everywhere,
    fwd,
    per_target,
    refused,
    tr,
)

# Anthropic-only features: forwarded to an Anthropic target, not sent to the others.
NATIVE_ONLY: Final = per_target(
    drop("no equivalent on OpenAI-compatible targets"), fwd(), drop("no equivalent on Bedrock Converse")
)


def priced_natively(modifier: str) -> Targets:
    """Sent to Anthropic targets at the price table's modifier (quotagate.logic.pricing); the chat
    translation for the others leaves it out."""
    return per_target(
        drop("no equivalent on OpenAI-compatible targets"),
        Disposition(Action.PRICED, modifier),
        drop("no equivalent on Bedrock Converse"),
    )


UNPRICED_SERVER_SIDE = "it runs on the provider's servers at a cost the price table does not carry yet"

CACHE_CONTROL: Final = Field(
    Obj("cache_control", {"type": Field(Str(("ephemeral",)), required=True), "ttl": Field(Str(("5m", "1h")))}),
    NATIVE_ONLY,
    doc="a prompt-cache breakpoint; the reservation prices the prompt as a 1-hour cache write",
)
CITATIONS_CONFIG = Field(Obj("citations", {"enabled": Field(Bool())}), NATIVE_ONLY)

_BASE64 = Obj(
    "base64_source",
    {"type": Field(Str(("base64",)), required=True), "media_type": Field(Str(), required=True), "data": Field(Str())},
)
_URL = Obj("url_source", {"type": Field(Str(("url",)), required=True), "url": Field(Str(), required=True)})
_TEXT_SOURCE = Obj(
    "text_source",
    {"type": Field(Str(("text",)), required=True), "media_type": Field(Str()), "data": Field(Str(), required=True)},
)
IMAGE_SOURCE = Tagged("image_source", {"base64": _BASE64, "url": _URL}, refused={"file": "files are server state"})
DOCUMENT_SOURCE = Tagged(
    "document_source",
    {"base64": _BASE64, "url": _URL, "text": _TEXT_SOURCE},
    refused={"file": "files are server state", "content": "nested content documents are not supported"},
)

TEXT_BLOCK = Obj(
    "text_block",
    {
        "type": Field(Str(("text",)), required=True),
        "text": Field(Str(), required=True),
        "cache_control": CACHE_CONTROL,
        "citations": Field(Array(Json()), NATIVE_ONLY),
    },
)
IMAGE_BLOCK = Obj(
    "image_block",
    {
        "type": Field(Str(("image",)), required=True),
        "source": Field(IMAGE_SOURCE, required=True),
        "cache_control": CACHE_CONTROL,
    },
)
DOCUMENT_BLOCK = Obj(
    "document_block",
    {
        "type": Field(Str(("document",)), required=True),
        "source": Field(DOCUMENT_SOURCE, required=True),
        "title": Field(Str()),
        "context": Field(Str()),
        "citations": CITATIONS_CONFIG,
        "cache_control": CACHE_CONTROL,
    },
)
TOOL_USE_BLOCK = Obj(
    "tool_use_block",
    {
        "type": Field(Str(("tool_use",)), required=True),
        "id": Field(Str(), required=True),
        "name": Field(Str(), required=True),
        "input": Field(Json("object"), required=True),
        "cache_control": CACHE_CONTROL,
    },
)
RESULT_CONTENT = OneOf(
    (
        Str(),
        Array(Tagged("tool_result_content", {"text": TEXT_BLOCK, "image": IMAGE_BLOCK, "document": DOCUMENT_BLOCK})),
    )
)
TOOL_RESULT_BLOCK = Obj(
    "tool_result_block",
    {
        "type": Field(Str(("tool_result",)), required=True),
        "tool_use_id": Field(Str(), required=True),
        "content": Field(RESULT_CONTENT),
        "is_error": Field(Bool()),
        "cache_control": CACHE_CONTROL,
    },
)
THINKING_BLOCK = Obj(
    "thinking_block",
    {
        "type": Field(Str(("thinking",)), required=True),
        "thinking": Field(Str(), required=True),
        "signature": Field(Str(), required=True),
    },
)
REDACTED_THINKING_BLOCK = Obj(
    "redacted_thinking_block",
    {"type": Field(Str(("redacted_thinking",)), required=True), "data": Field(Str(), required=True)},
)
SERVER_BLOCKS_REFUSED: Final = {
    name: f"server tool results need the server tool, and {UNPRICED_SERVER_SIDE}"
    for name in ("server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result")
}
CONTENT_BLOCK = Tagged(
    "content_block",
    {
        "text": TEXT_BLOCK,
        "image": IMAGE_BLOCK,
        "document": DOCUMENT_BLOCK,
        "tool_use": TOOL_USE_BLOCK,
        "tool_result": TOOL_RESULT_BLOCK,
        "thinking": THINKING_BLOCK,
        "redacted_thinking": REDACTED_THINKING_BLOCK,
    },
    refused={**SERVER_BLOCKS_REFUSED, "container_upload": "containers are server state"},
)
MESSAGE_ROLES: Final = ("user", "assistant", "system")
MESSAGE = Obj(
    "message",
    {
        "role": Field(Str(MESSAGE_ROLES), required=True),
        "content": Field(OneOf((Str(), Array(CONTENT_BLOCK))), required=True),
        # Only on system turns (a beta): when the turn stops being shown; folded turns keep it.
        "clear_at": Field(Str(("next_user_message", "never")), dropped("system turns are folded into a user turn")),
    },
)
SYSTEM = OneOf((Str(), Array(TEXT_BLOCK)))

CUSTOM_TOOL = Obj(
    "custom_tool",
    {
        "type": Field(Str(("custom",))),
        "name": Field(Str(min_length=1, max_length=64), required=True),
        "description": Field(Str()),
        "input_schema": Field(Json("object"), required=True),
        "cache_control": CACHE_CONTROL,
        "strict": Field(Bool(), NATIVE_ONLY),
        "eager_input_streaming": Field(Bool(), per_target(drop("streaming detail"), fwd(), drop("streaming detail"))),
        "defer_loading": Field(Bool(), dropped("tool search is a server tool; every tool is sent and counted")),
        "input_examples": Field(Array(Json()), dropped("extra prompt tokens the estimate does not count")),
        "allowed_callers": Field(Array(Str()), dropped("only direct calls: code execution is not offered")),
    },
)
SERVER_TOOLS_REFUSED: Final = (
    {
        name: f"a server tool: {UNPRICED_SERVER_SIDE} (define a client tool with name and input_schema)"
        for name in (
            "web_search_20250305",
            "web_search_20260209",
            "web_fetch_20250910",
            "web_fetch_20260209",
            "code_execution_20250522",
            "code_execution_20250825",
            "code_execution_20260120",
            "bash_20250124",
            "text_editor_20250124",
            "text_editor_20250429",
            "text_editor_20250728",
            "computer_20250124",
            "computer_20251124",
            "memory_20250818",
            "tool_search_tool_regex_20251119",
            "tool_search_tool_bm25_20251119",
            "mcp_toolset",
        )
    }
    | {
        # Their per-call fees fit the price table (tool_calls_usd) and max_uses bounds the calls, but
        # what each call adds to the bill has no bound a request can state.
        name: "a server tool whose results are billed as input tokens of a size no field bounds, so no "
        "reservation covers it (define a client tool with name and input_schema and search yourself)"
        for name in ("web_search_20250305", "web_search_20260209", "web_fetch_20250910", "web_fetch_20260209")
    }
    | {
        name: "a server tool billed by container time, which no field bounds (define a client tool with name "
        "and input_schema)"
        for name in ("code_execution_20250522", "code_execution_20250825", "code_execution_20260120")
    }
)
TOOL = Tagged("tool", {"custom": CUSTOM_TOOL}, default="custom", refused=SERVER_TOOLS_REFUSED)

TOOL_CHOICE = Tagged(
    "tool_choice",
    {
        "auto": Obj("tool_choice_auto", {"type": Field(Str()), "disable_parallel_tool_use": Field(Bool())}),
        "any": Obj("tool_choice_any", {"type": Field(Str()), "disable_parallel_tool_use": Field(Bool())}),
        "tool": Obj(
            "tool_choice_tool",
            {"type": Field(Str()), "name": Field(Str(), required=True), "disable_parallel_tool_use": Field(Bool())},
        ),
        "none": Obj("tool_choice_none", {"type": Field(Str())}),
    },
)
THINKING = Tagged(
    "thinking",
    {
        "enabled": Obj(
            "thinking_enabled", {"type": Field(Str()), "budget_tokens": Field(Int(minimum=1024), required=True)}
        ),
        "disabled": Obj("thinking_disabled", {"type": Field(Str())}),
        "adaptive": Obj("thinking_adaptive", {"type": Field(Str()), "display": Field(Str())}),
        "between_tools": Obj("thinking_between_tools", {"type": Field(Str())}),
    },
)
EFFORTS: Final = ("low", "medium", "high", "xhigh", "max")
OUTPUT_CONFIG = Obj(
    "output_config",
    {
        "effort": Field(
            Str(EFFORTS),
            per_target(
                drop("OpenAI efforts differ"), fwd("thinking is output, bounded by max_tokens"), drop("no equivalent")
            ),
        ),
        "format": Field(
            Obj(
                "json_schema_format",
                {"type": Field(Str(("json_schema",)), required=True), "schema": Field(Json("object"), required=True)},
            ),
            per_target(tr("response_format json_schema"), fwd(), tr("a forced tool")),
        ),
    },
)
CONTEXT_EDIT = Tagged(
    "context_edit",
    {
        "clear_tool_uses_20250919": Obj("clear_tool_uses", {}, unknown="keep"),
        "clear_thinking_20251015": Obj("clear_thinking", {}, unknown="keep"),
    },
    refused={"compact_20260112": f"compaction runs a summarising model call: {UNPRICED_SERVER_SIDE}"},
)
CONTEXT_MANAGEMENT = Obj("context_management", {"edits": Field(Array(CONTEXT_EDIT))})

MESSAGES_FIELDS: Final[dict[str, Field]] = {
    "model": Field(Str(min_length=1), TRANSLATED, required=True, doc="a model or alias; the route's model is sent"),
    "messages": Field(Array(MESSAGE, min_items=1), TRANSLATED, required=True),
    "max_tokens": Field(
        Int(minimum=1),
        everywhere(Action.BOUNDED, "the output cap; the gateway sends the cap its reservation covers"),
        required=True,
    ),
    "system": Field(SYSTEM, TRANSLATED),
    "stop_sequences": Field(Array(Str()), per_target(tr("stop"), fwd(), tr("stopSequences"))),
    "stream": Field(Bool(), TRANSLATED),
    "temperature": Field(Num(0, 1), FORWARDED),
    "top_p": Field(Num(0, 1), FORWARDED),
    "top_k": Field(Int(minimum=0), NATIVE_ONLY),
    "metadata": Field(
        Obj("metadata", {"user_id": Field(Str(max_length=256))}),
        per_target(tr("user"), fwd(), drop("no equivalent")),
    ),
    "tools": Field(Array(TOOL), TRANSLATED),
    "tool_choice": Field(TOOL_CHOICE, TRANSLATED),
    "thinking": Field(
        THINKING,
        per_target(
            drop("no equivalent on chat"),
            fwd("thinking is output, bounded by max_tokens (reserved whole)"),
            drop("no equivalent on Converse"),
        ),
    ),
    "output_config": Field(OUTPUT_CONFIG, TRANSLATED),
    "cache_control": CACHE_CONTROL,
    "context_management": Field(
        CONTEXT_MANAGEMENT,
        per_target(
            drop("clearing only shortens the prompt, which is reserved whole"),
            fwd("with the context-management beta"),
            drop("clearing only shortens the prompt, which is reserved whole"),
        ),
    ),
    "service_tier": Field(
        Str(("auto", "standard_only")),
        priced_natively(
            "price.service_tiers: 'auto' reserves at its entry (1x if none); settled at the tier Anthropic reports"
        ),
    ),
    "speed": Field(
        Str(("standard", "fast")),
        priced_natively("price.fast_mode multiplies every token price; 'fast' without it is a 400"),
    ),
    "inference_geo": Field(
        Str(), priced_natively("price.inference_geos multiplies every token price; a geography without it is a 400")
    ),
    "container": Field(Json(), refused("containers are server-side state; this gateway keeps none")),
    "mcp_servers": Field(Json(), refused(f"remote MCP tools: {UNPRICED_SERVER_SIDE}")),
    "diagnostics": Field(Json(), dropped("provider-side diagnostics; nothing to bill")),
}

MESSAGES: Final = Obj("messages_request", MESSAGES_FIELDS)

COUNT_TOKENS_NAMES: Final = (
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "cache_control",
    "context_management",
    "mcp_servers",
    "speed",
)
COUNT_TOKENS: Final = Obj(
    "count_tokens_request",
    {
        **{name: MESSAGES_FIELDS[name] for name in COUNT_TOKENS_NAMES if name != "speed"},
        # Counting costs nothing: the gateway answers with its own estimate and calls no model.
        "speed": Field(Str(("standard", "fast")), dropped("counting calls no model")),
        "mcp_servers": Field(Json(), dropped("counting calls no model")),
    },
)
