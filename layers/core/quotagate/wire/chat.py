"""The OpenAI chat completions API's fields: ``POST /v1/chat/completions``.

Source: the openai SDK's ``types/chat/completion_create_params.py`` (3.3). An OpenAI-compatible
target gets the body (only the fields forwarded there, the model and output cap set by the route);
Anthropic and Bedrock targets get its translation (:mod:`quotagate.providers.anthropic`,
:mod:`quotagate.providers.bedrock`), which carries what those APIs have and leaves out the rest.
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
    Map,
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

NOT_TRANSLATED = "no equivalent in the target's API"
# Sent to OpenAI-compatible targets only; the translations for the others leave it out.
OPENAI_ONLY: Final = per_target(fwd(), drop(NOT_TRANSLATED), drop(NOT_TRANSLATED))


def priced_upstream(modifier: str) -> Targets:
    """Sent to OpenAI-compatible targets at the price table's modifier (quotagate.logic.pricing);
    the translations for the others leave it out (their plain token prices)."""
    return per_target(Disposition(Action.PRICED, modifier), drop(NOT_TRANSLATED), drop(NOT_TRANSLATED))


# A prompt-cache breakpoint (Anthropic's, as OpenAI-compatible gateways such as litellm accept it):
# the reservation prices a marked prompt as a 1-hour cache write.
CACHE_CONTROL: Final = Field(
    Obj("cache_control", {"type": Field(Str(("ephemeral",)), required=True), "ttl": Field(Str(("5m", "1h")))}),
    per_target(fwd(), tr("a cache breakpoint on the block"), drop(NOT_TRANSLATED)),
)
TEXT_PART = Obj(
    "text_part", {"type": Field(Str()), "text": Field(Str(), required=True), "cache_control": CACHE_CONTROL}
)
IMAGE_PART = Obj(
    "image_part",
    {
        "type": Field(Str()),
        "image_url": Field(
            Obj("image_url", {"url": Field(Str(), required=True), "detail": Field(Str(("auto", "low", "high")))}),
            required=True,
        ),
        "cache_control": CACHE_CONTROL,
    },
)
FILE_PART = Obj(
    "file_part",
    {
        "type": Field(Str()),
        "file": Field(
            Obj("file", {"file_data": Field(Str()), "file_id": Field(Str()), "filename": Field(Str())}), required=True
        ),
    },
)
AUDIO_PART = Obj(
    "input_audio_part",
    {
        "type": Field(Str()),
        "input_audio": Field(
            Obj(
                "input_audio",
                {"data": Field(Str(), required=True), "format": Field(Str(("wav", "mp3")), required=True)},
            ),
            required=True,
        ),
    },
)
REFUSAL_PART = Obj("refusal_part", {"type": Field(Str()), "refusal": Field(Str(), required=True)})
CONTENT_PART = Tagged(
    "content_part",
    {"text": TEXT_PART, "image_url": IMAGE_PART, "file": FILE_PART, "input_audio": AUDIO_PART, "refusal": REFUSAL_PART},
)
FUNCTION_CALL = Obj("function_call", {"name": Field(Str(), required=True), "arguments": Field(Str(), required=True)})
TOOL_CALL = Tagged(
    "tool_call",
    {
        "function": Obj(
            "function_tool_call",
            {"id": Field(Str(), required=True), "type": Field(Str()), "function": Field(FUNCTION_CALL, required=True)},
        )
    },
    default="function",
    refused={"custom": "custom (free-form) tools are not supported; define a function tool"},
)
ROLES: Final = ("system", "developer", "user", "assistant", "tool", "function")
MESSAGE = Obj(
    "message",
    {
        "role": Field(Str(ROLES), required=True),
        "content": Field(OneOf((Str(), Array(CONTENT_PART)))),
        "name": Field(Str(), OPENAI_ONLY),
        "tool_calls": Field(Array(TOOL_CALL)),
        "tool_call_id": Field(Str()),
        "function_call": Field(FUNCTION_CALL, OPENAI_ONLY),
        "refusal": Field(Str()),
        "audio": Field(
            Json(), refused("an earlier audio answer by id is server state: send its transcript as content")
        ),
        # Reasoning text some compatible servers return (DeepSeek, vLLM): not sent back.
        "reasoning_content": Field(Str(), dropped("an earlier answer's reasoning; the model reasons afresh")),
        "cache_control": CACHE_CONTROL,
    },
)
FUNCTION = Obj(
    "function",
    {
        "name": Field(Str(min_length=1, max_length=64), required=True),
        "description": Field(Str()),
        "parameters": Field(Json("object")),
        "strict": Field(Bool()),
    },
)
TOOL = Tagged(
    "tool",
    {
        "function": Obj(
            "function_tool",
            {"type": Field(Str()), "function": Field(FUNCTION, required=True), "cache_control": CACHE_CONTROL},
        )
    },
    refused={"custom": "custom (free-form) tools are not supported; define a function tool"},
)
TOOL_CHOICE = OneOf(
    (
        Str(("none", "auto", "required")),
        Tagged(
            "named_tool_choice",
            {
                "function": Obj(
                    "function_choice",
                    {
                        "type": Field(Str()),
                        "function": Field(
                            Obj("function_choice_name", {"name": Field(Str(), required=True)}), required=True
                        ),
                    },
                )
            },
            refused={
                "allowed_tools": "send only the allowed tools instead",
                "custom": "custom (free-form) tools are not supported",
            },
        ),
    )
)
RESPONSE_FORMAT = Tagged(
    "response_format",
    {
        "text": Obj("response_format_text", {"type": Field(Str())}),
        "json_object": Obj("response_format_json_object", {"type": Field(Str())}),
        "json_schema": Obj(
            "response_format_json_schema",
            {
                "type": Field(Str()),
                "json_schema": Field(
                    Obj(
                        "json_schema_spec",
                        {
                            "name": Field(Str(), required=True),
                            "description": Field(Str()),
                            "schema": Field(Json("object")),
                            "strict": Field(Bool()),
                        },
                    ),
                    required=True,
                ),
            },
        ),
    },
)
HIDDEN_OUTPUT = "hidden output no stream shows: the whole output cap is reserved up front"

CHAT_FIELDS: Final[dict[str, Field]] = {
    "model": Field(Str(min_length=1), TRANSLATED, required=True, doc="a model or alias; the route's model is sent"),
    "messages": Field(
        Array(MESSAGE, min_items=1),
        per_target(fwd(), tr(), tr()),
        required=True,
        doc="audio input parts are counted by the reservation (their token price: see pricing)",
    ),
    "max_tokens": Field(
        Int(minimum=1),
        everywhere(Action.BOUNDED, "the output cap; the gateway sends the cap its reservation covers"),
    ),
    "max_completion_tokens": Field(
        Int(minimum=1),
        everywhere(Action.BOUNDED, "the output cap; the gateway sends the cap its reservation covers"),
    ),
    "n": Field(Int(1, 8), per_target(Disposition(Action.BOUNDED, "the reservation counts every choice"), tr(), tr())),
    "stream": Field(Bool(), TRANSLATED),
    "stream_options": Field(
        Obj("stream_options", {"include_usage": Field(Bool()), "include_obfuscation": Field(Bool())}),
        everywhere(Action.TRANSLATED, "usage is always asked for upstream, and removed unless the client asked"),
    ),
    "temperature": Field(Num(0, 2), per_target(fwd(), tr("clamped to 0..1"), tr("clamped to 0..1"))),
    "top_p": Field(Num(0, 1), FORWARDED),
    "presence_penalty": Field(Num(-2, 2), OPENAI_ONLY),
    "frequency_penalty": Field(Num(-2, 2), OPENAI_ONLY),
    "stop": Field(
        OneOf((Str(), Array(Str(), max_items=4))), per_target(fwd(), tr("stop_sequences"), tr("stopSequences"))
    ),
    "seed": Field(Int(), OPENAI_ONLY),
    "logit_bias": Field(Map(Int(-100, 100), max_entries=300), OPENAI_ONLY),
    "logprobs": Field(Bool(), OPENAI_ONLY),
    "top_logprobs": Field(Int(0, 20), OPENAI_ONLY),
    "user": Field(Str(), per_target(fwd(), tr("metadata.user_id"), drop(NOT_TRANSLATED))),
    "safety_identifier": Field(Str(), OPENAI_ONLY),
    "metadata": Field(Map(Str(max_length=512), max_entries=16, max_key_length=64), OPENAI_ONLY),
    "tools": Field(Array(TOOL), per_target(fwd(), tr(), tr())),
    "tool_choice": Field(TOOL_CHOICE, per_target(fwd(), tr(), tr())),
    "parallel_tool_calls": Field(Bool(), per_target(fwd(), tr("disable_parallel_tool_use"), drop(NOT_TRANSLATED))),
    "functions": Field(Array(FUNCTION), OPENAI_ONLY, doc="legacy; tools on other targets"),
    "function_call": Field(
        OneOf((Str(("none", "auto")), Obj("function_name", {"name": Field(Str(), required=True)}))), OPENAI_ONLY
    ),
    "response_format": Field(RESPONSE_FORMAT, per_target(fwd(), tr("a forced tool"), tr("a forced tool"))),
    "verbosity": Field(Str(("low", "medium", "high")), OPENAI_ONLY),
    "reasoning_effort": Field(
        Str(("none", "minimal", "low", "medium", "high", "xhigh")),
        per_target(Disposition(Action.BOUNDED, HIDDEN_OUTPUT), drop(NOT_TRANSLATED), drop(NOT_TRANSLATED)),
    ),
    "prompt_cache_key": Field(Str(), OPENAI_ONLY),
    "prompt_cache_retention": Field(Str(("in_memory", "24h")), OPENAI_ONLY),
    "store": Field(Bool(), dropped("nothing is stored at the provider through the gateway")),
    "service_tier": Field(
        Str(("auto", "default", "flex", "scale", "priority", "fast")),
        priced_upstream(
            "price.service_tiers: reserved at the tier asked for, settled at the tier served; unlisted is a 400"
        ),
    ),
    "modalities": Field(
        Array(Str(("text", "audio"))),
        priced_upstream("audio: price.audio_output_per_million on the whole cap; without it a 400"),
    ),
    "audio": Field(
        Obj("audio", {"voice": Field(Json()), "format": Field(Str())}),
        priced_upstream("the audio output's voice and format: priced with modalities"),
    ),
    "prediction": Field(
        Json(),
        per_target(
            Disposition(Action.BOUNDED, f"{HIDDEN_OUTPUT}, and the prediction's length on top (rejected tokens)"),
            drop(NOT_TRANSLATED),
            drop(NOT_TRANSLATED),
        ),
    ),
    "web_search_options": Field(
        Json("object"),
        priced_upstream("one search per request at price.tool_calls_usd.web_search; without it a 400"),
    ),
    "moderation": Field(Json(), dropped("provider-side moderation policy")),
    "prompt_cache_options": Field(Json(), dropped("the provider's default caching")),
}
CHAT: Final = Obj("chat_request", CHAT_FIELDS)
