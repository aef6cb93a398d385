"""The OpenAI Responses API's fields: ``POST /v1/responses``.

Sources: the openai SDK's ``types/responses/response_create_params.py`` (3.3), and what Codex CLI
0.17x sends by default (``client_metadata``, ``store: false``, ``include:
["reasoning.encrypted_content"]``, ``prompt_cache_key``, ``namespace`` tools, the hosted
``web_search`` tool; ``reasoning`` and ``text.verbosity`` for models that take them).

Every target gets the request's chat translation (:mod:`quotagate.protocols.openai_responses`), so
a field's disposition is what that translation does with it, and then what the chat endpoint does
on each target type (:mod:`quotagate.wire.chat`).
"""

from __future__ import annotations

from typing import Final

from quotagate.wire.schema import (
    TRANSLATED,
    Action,
    Array,
    Bool,
    Disposition,
    Field,
    Int,
    Json,
    Map,
    Num,
    Obj,
    OneOf,
    Str,
    Tagged,
    dropped,
    everywhere,
    per_target,
    refused,
    tr,
)

STATELESS = "it needs state stored on the server, and this gateway stores nothing: send the whole conversation"
HOSTED_UNPRICED = "a hosted tool runs on the provider's servers at a cost the price table does not carry yet"

_ID_AND_STATUS: Final = {
    "id": Field(Str(), dropped("item ids are the client's")),
    "status": Field(Str(), dropped("item status is the client's")),
}
TEXT_PART = Obj("input_text", {"type": Field(Str()), "text": Field(Str(), required=True)})
OUTPUT_TEXT_PART = Obj(
    "output_text",
    {
        "type": Field(Str()),
        "text": Field(Str(), required=True),
        "annotations": Field(Array(Json()), dropped("citations of an earlier answer")),
        "logprobs": Field(Array(Json()), dropped("of an earlier answer")),
    },
)
IMAGE_PART = Obj(
    "input_image",
    {
        "type": Field(Str()),
        "image_url": Field(Str()),
        "file_id": Field(Str()),
        "detail": Field(Str(("auto", "low", "high", "original"))),
    },
)
FILE_PART = Obj(
    "input_file",
    {
        "type": Field(Str()),
        "file_data": Field(Str()),
        "file_id": Field(Str()),
        "file_url": Field(Str()),
        "filename": Field(Str()),
    },
)
CONTENT_PART = Tagged(
    "content_part",
    {
        "input_text": TEXT_PART,
        "output_text": OUTPUT_TEXT_PART,
        "text": TEXT_PART,
        "refusal": Obj("refusal", {"type": Field(Str()), "refusal": Field(Str(), required=True)}),
        "input_image": IMAGE_PART,
        "input_file": FILE_PART,
    },
)
ROLES: Final = ("user", "assistant", "system", "developer")
MESSAGE_ITEM = Obj(
    "message_item",
    {
        "type": Field(Str()),
        "role": Field(Str(ROLES), required=True),
        "content": Field(OneOf((Str(), Array(CONTENT_PART))), required=True),
        "phase": Field(Str(), dropped("Codex's own marker")),
        **_ID_AND_STATUS,
    },
)
FUNCTION_CALL_ITEM = Obj(
    "function_call_item",
    {
        "type": Field(Str()),
        "call_id": Field(Str(), required=True),
        "name": Field(Str(), required=True),
        "namespace": Field(Str(), TRANSLATED, doc="joined to the name, as the flattened tool's"),
        "arguments": Field(Str(), required=True),
        **_ID_AND_STATUS,
    },
)
FUNCTION_OUTPUT_ITEM = Obj(
    "function_call_output_item",
    {
        "type": Field(Str()),
        "call_id": Field(Str(), required=True),
        "output": Field(OneOf((Str(), Array(CONTENT_PART))), required=True),
        **_ID_AND_STATUS,
    },
)
REASONING_ITEM = Obj(
    "reasoning_item",
    {
        "type": Field(Str()),
        "summary": Field(Array(Json())),
        "content": Field(Array(Json())),
        "encrypted_content": Field(Str()),
        **_ID_AND_STATUS,
    },
)
INPUT_ITEM = Tagged(
    "input_item",
    {
        "message": MESSAGE_ITEM,
        "function_call": FUNCTION_CALL_ITEM,
        "function_call_output": FUNCTION_OUTPUT_ITEM,
        # Earlier reasoning has no chat equivalent: the model reasons afresh (dropped in translation).
        "reasoning": REASONING_ITEM,
        "item_reference": Obj("item_reference", {"type": Field(Str()), "id": Field(Str())}),
    },
    default="message",
    refused={
        name: "the hosted tools that produce it are not offered"
        for name in ("web_search_call", "file_search_call", "computer_call", "code_interpreter_call", "mcp_call")
    },
)

FUNCTION_TOOL = Obj(
    "function_tool",
    {
        "type": Field(Str()),
        "name": Field(Str(min_length=1, max_length=64), required=True),
        "description": Field(Str()),
        "parameters": Field(Json("object")),
        "strict": Field(Bool()),
        "defer_loading": Field(Bool(), dropped("tool search is hosted; every tool is sent and counted")),
        "output_schema": Field(Json("object"), dropped("documents the tool's output only")),
        "allowed_callers": Field(Array(Str()), dropped("only direct calls")),
    },
)
NAMESPACE_TOOL = Obj(
    "namespace_tool",
    {
        "type": Field(Str()),
        "name": Field(Str(min_length=1), required=True),
        "description": Field(Str()),
        "tools": Field(
            Array(
                Tagged(
                    "namespace_member",
                    {"function": FUNCTION_TOOL},
                    refused={"custom": "custom (free-form) tools are not supported; define a function tool"},
                )
            ),
            required=True,
        ),
    },
)
# Hosted web search: Codex sends it by default; no target of the chat translation runs it, so the
# translation drops it and names it (Codex users switch it off with web_search = "disabled").
WEB_SEARCH_TOOL = Obj("web_search_tool", {}, unknown="keep")
TOOL = Tagged(
    "tool",
    {
        "function": FUNCTION_TOOL,
        "namespace": NAMESPACE_TOOL,
        "web_search": WEB_SEARCH_TOOL,
        "web_search_preview": WEB_SEARCH_TOOL,
        "web_search_2025_08_26": WEB_SEARCH_TOOL,
        "web_search_preview_2025_03_11": WEB_SEARCH_TOOL,
    },
    refused={
        **{
            name: HOSTED_UNPRICED
            for name in (
                "file_search",
                "code_interpreter",
                "image_generation",
                "computer_use_preview",
                "computer",
                "mcp",
                "local_shell",
                "shell",
                "apply_patch",
                "tool_search",
            )
        },
        "custom": "custom (free-form) tools are not supported; define a function tool",
    },
)
HOSTED_TOOLS_DROPPED: Final = frozenset(
    {"web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11"}
)
TOOL_CHOICE = OneOf(
    (
        Str(("auto", "none", "required")),
        Obj("function_choice", {"type": Field(Str(("function",)), required=True), "name": Field(Str(), required=True)}),
    )
)
TEXT_FORMAT = Tagged(
    "text_format",
    {
        "text": Obj("text_format_text", {"type": Field(Str())}),
        "json_object": Obj("text_format_json_object", {"type": Field(Str())}),
        "json_schema": Obj(
            "text_format_json_schema",
            {
                "type": Field(Str()),
                "name": Field(Str(), required=True),
                "schema": Field(Json("object"), required=True),
                "description": Field(Str()),
                "strict": Field(Bool()),
            },
        ),
    },
)
TEXT = Obj(
    "text_config",
    {
        "format": Field(TEXT_FORMAT, per_target(tr("response_format"), tr("a forced tool"), tr("a forced tool"))),
        "verbosity": Field(
            Str(("low", "medium", "high")), everywhere(Action.TRANSLATED, "echoed in the response only")
        ),
    },
)
EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh")
REASONING = Obj(
    "reasoning_config",
    {
        "effort": Field(
            Str(EFFORTS),
            per_target(
                Disposition(
                    Action.BOUNDED,
                    "reasoning_effort: hidden reasoning tokens are output; without max_output_tokens the whole "
                    "cap is reserved",
                ),
                Disposition(Action.DROPPED, "the chat translation's Anthropic request carries no effort"),
                Disposition(Action.DROPPED, "no equivalent"),
            ),
        ),
        "summary": Field(Str(("auto", "concise", "detailed", "none")), dropped("no reasoning summaries on chat")),
        "generate_summary": Field(Str(), dropped("no reasoning summaries on chat")),
    },
)
SERVICE_TIERS: Final = ("auto", "default", "flex", "scale", "priority", "fast")

RESPONSES_FIELDS: Final[dict[str, Field]] = {
    "model": Field(Str(min_length=1), TRANSLATED, required=True, doc="a model or alias; the route's model is sent"),
    "input": Field(OneOf((Str(), Array(INPUT_ITEM))), TRANSLATED, required=True),
    "instructions": Field(Str(), everywhere(Action.TRANSLATED, "a leading system message")),
    "tools": Field(
        Array(TOOL),
        everywhere(
            Action.TRANSLATED,
            "function tools; namespace tools flattened into function tools (calls mapped back); "
            "hosted web_search dropped and named",
        ),
    ),
    "tool_choice": Field(TOOL_CHOICE, TRANSLATED),
    "parallel_tool_calls": Field(Bool(), TRANSLATED),
    "max_output_tokens": Field(
        Int(minimum=1), everywhere(Action.BOUNDED, "the output cap; the gateway sends the cap its reservation covers")
    ),
    "temperature": Field(Num(0, 2), TRANSLATED),
    "top_p": Field(Num(0, 1), TRANSLATED),
    "text": Field(TEXT, TRANSLATED),
    "stream": Field(Bool(), TRANSLATED),
    "stream_options": Field(Obj("stream_options", {"include_obfuscation": Field(Bool())}), dropped("no effect")),
    "metadata": Field(
        Map(Str(max_length=512), max_entries=16, max_key_length=64),
        everywhere(Action.TRANSLATED, "echoed in the response only"),
    ),
    "user": Field(Str(), everywhere(Action.TRANSLATED, "user")),
    "safety_identifier": Field(Str(), everywhere(Action.TRANSLATED, "user")),
    "reasoning": Field(REASONING, TRANSLATED),
    "store": Field(Bool(), dropped("nothing is stored: the response says store false")),
    "include": Field(Array(Str()), dropped("no hosted tool output nor encrypted reasoning to include")),
    "prompt_cache_key": Field(Str(), dropped("providers cache prompts by prefix anyway")),
    "prompt_cache_retention": Field(Str(("in_memory", "24h")), dropped("the provider's default retention")),
    "prompt_cache_options": Field(Json(), dropped("the provider's default caching")),
    "client_metadata": Field(Map(Json()), dropped("Codex's own bookkeeping; no effect on cost or safety")),
    "truncation": Field(Str(("auto", "disabled")), dropped("the gateway never truncates: too long is a 400")),
    "context_management": Field(Array(Json()), dropped("server-side compaction needs stored state")),
    "moderation": Field(Json(), dropped("provider-side moderation policy")),
    "service_tier": Field(
        Str(SERVICE_TIERS),
        per_target(
            Disposition(
                Action.PRICED,
                "chat service_tier: price.service_tiers, reserved at the tier asked for, settled at the tier "
                "served; unlisted is a 400",
            ),
            Disposition(Action.DROPPED, "the chat translation's Anthropic request carries no tier"),
            Disposition(Action.DROPPED, "no equivalent"),
        ),
    ),
    "background": Field(Bool(), TRANSLATED, doc="true is a 400: background responses are stored"),
    "previous_response_id": Field(Str(), refused(STATELESS)),
    "conversation": Field(Json(), refused(STATELESS)),
    "prompt": Field(Json(), refused(f"stored prompts: {STATELESS}")),
    "max_tool_calls": Field(Int(minimum=0), refused("hosted tool calls are not offered")),
    "top_logprobs": Field(Int(minimum=0), refused("log probabilities are not translated")),
}
RESPONSES: Final = Obj("responses_request", RESPONSES_FIELDS)
