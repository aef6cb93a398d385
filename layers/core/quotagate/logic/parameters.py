"""One rule for sampling parameters and structured output, whatever the target.

Values are checked at the gateway against the OpenAI ranges (:data:`OPENAI_RANGES`), so a value
out of range is the same 400 (``invalid_value``, naming the parameter) on every model and alias, and
never reaches a target (nor fails over by chance). Each provider adapter then maps the valid value
into its own range deterministically: see :func:`provider_temperature`.

``response_format`` is checked here too (``text``, ``json_object``, or ``json_schema`` with a
``name`` and an object ``schema``); providers without native structured output emulate it with a
forced tool call (:func:`response_tool`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from quotagate.errors import invalid_request

# name -> (lowest, highest), inclusive, as the OpenAI API documents them.
OPENAI_RANGES: Final[dict[str, tuple[float, float]]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
ResponseFormatType = Literal["text", "json_object", "json_schema"]
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Anthropic and Bedrock sample with temperature in 0..1: OpenAI's 1..2 is clamped to their 1.0
# (values in 0..1 mean the same everywhere, so they are kept, not scaled).
PROVIDER_MAX_TEMPERATURE: Final = 1.0
JSON_OBJECT_TOOL: Final = "json_object"


def check_ranges(body: dict[str, Any]) -> None:
    """400 ``invalid_value`` for a sampling parameter outside its OpenAI range (types are checked
    by the caller)."""
    for name, (low, high) in OPENAI_RANGES.items():
        value = body.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and not low <= value <= high:
            raise invalid_request(
                f"'{name}' must be between {low:g} and {high:g} (got {value!r}).", param=name, code="invalid_value"
            )


def check_response_format(body: dict[str, Any]) -> None:
    value = body.get("response_format")
    if value is None:
        return
    kinds = get_args(ResponseFormatType)
    if not isinstance(value, dict) or value.get("type") not in kinds:
        raise invalid_request(
            f"'response_format.type' must be one of {list(kinds)}.", param="response_format", code="invalid_value"
        )
    if value["type"] != "json_schema":
        return
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not _SCHEMA_NAME.match(spec["name"]):
        raise invalid_request(
            "'response_format.json_schema.name' must be 1 to 64 letters, digits, '_' or '-'.",
            param="response_format.json_schema.name",
            code="invalid_value",
        )
    if spec.get("schema") is not None and not isinstance(spec["schema"], dict):
        raise invalid_request(
            "'response_format.json_schema.schema' must be a JSON schema object.",
            param="response_format.json_schema.schema",
            code="invalid_value",
        )


def provider_temperature(value: float) -> float:
    """An OpenAI temperature (0..2, checked) in the 0..1 range of Anthropic and Bedrock models."""
    return min(max(float(value), 0.0), PROVIDER_MAX_TEMPERATURE)


@dataclass(frozen=True)
class ResponseTool:
    """The tool that stands for ``response_format`` on a provider without structured output: the
    model is forced to call it, and its arguments are the answer's content."""

    name: str
    description: str
    schema: dict[str, Any]


def response_tool(body: dict[str, Any]) -> ResponseTool | None:
    """The forced tool for the request's ``response_format`` (None for text or no format)."""
    value = body.get("response_format")
    if not isinstance(value, dict):
        return None
    if value.get("type") == "json_object":
        return ResponseTool(JSON_OBJECT_TOOL, "Give the answer as a JSON object.", {"type": "object"})
    spec = value.get("json_schema")
    if value.get("type") != "json_schema" or not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return None
    schema = spec.get("schema")
    description = spec.get("description")
    return ResponseTool(
        spec["name"],
        description if isinstance(description, str) and description else "Give the answer in this structure.",
        dict(schema) if isinstance(schema, dict) else {"type": "object"},
    )
