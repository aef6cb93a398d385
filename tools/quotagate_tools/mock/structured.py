"""Tool calls and structured output of the mock's OpenAI-compatible dialect.

- **Tools.** With ``tools``, the reply calls one function instead of answering in text: the one
  ``tool_choice`` names, else (``required``, ``auto`` or no choice) the first tool the last user
  turn names (:func:`tool_asked_for`), or the first tool — except with
  ``auto`` / no choice right after a ``tool`` message, when the mock answers in text like a model
  that got its answer. ``tool_choice: "none"`` answers in text. The arguments are made from the
  function's ``parameters`` schema (:func:`value_for_schema`).
- **response_format.** ``json_schema``: the reply is a JSON value made from the schema;
  ``json_object``: like a model in JSON mode, an object of the schema the prompt describes
  (:func:`described_object`: instructor's JSON mode writes the schema into the system message),
  else ``{"answer": <the text reply>}``.
- **JSON mode on the other dialects.** The Anthropic and Bedrock mocks answer a tool whose input
  schema names no properties (the forced tool the gateway sends for ``json_object``) with the same
  :func:`described_object`, so JSON mode gives the described fields on every provider type.

Values are deterministic (a seed from the conversation) and valid for the common JSON-schema
keywords: ``type`` (also as a list), ``properties`` (every one, as strict mode wants), ``items``,
``enum``, ``const``, ``$ref`` into ``$defs``/``definitions``, ``anyOf``/``oneOf`` (the first
non-null branch), ``allOf``, ``minItems``, ``minimum``/``maximum``, ``format`` date/date-time/email.
JSON texts are streamed in pieces of :data:`PIECE_CHARS` characters; each piece counts as one
completion token.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any, Final

from quotagate_tools.mock import vocab

if TYPE_CHECKING:
    from collections.abc import Iterator

PIECE_CHARS: Final = 4
MAX_DEPTH: Final = 8  # recursive schemas stop here (with null, or an empty object/array)
MAX_SCHEMA_ATTEMPTS: Final = 64  # "{" positions tried per prompt text when looking for a schema


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    target: Any = root
    for part in ref[2:].split("/"):
        target = target.get(part) if isinstance(target, dict) else None
    return target if isinstance(target, dict) else {}


def value_for_schema(schema: Any, seed: int = 0, root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A deterministic value that ``schema`` accepts."""
    if not isinstance(schema, dict):
        return vocab.WORDS[seed % len(vocab.WORDS)]
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    branch = _first_branch(schema)
    if branch is not None:
        return value_for_schema(branch, seed, root, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, root) if isinstance(part, dict) else {})
        return value_for_schema({**merged, **{k: v for k, v in schema.items() if k != "allOf"}}, seed, root, depth)
    kind = _kind(schema)
    if depth >= MAX_DEPTH:
        return {"object": {}, "array": []}.get(kind)
    if kind == "object":
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {
            name: value_for_schema(prop, seed + i, root, depth + 1) for i, (name, prop) in enumerate(properties.items())
        }
    if kind == "array":
        count = max(1, schema.get("minItems") if isinstance(schema.get("minItems"), int) else 1)
        return [value_for_schema(schema.get("items"), seed + i, root, depth + 1) for i in range(count)]
    return _scalar(kind, schema, seed)


def _first_branch(schema: dict[str, Any]) -> Any:
    """The first non-null branch of an ``anyOf`` / ``oneOf`` (None without one)."""
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            usable = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")] or branches
            return usable[0]
    return None


def _kind(schema: dict[str, Any]) -> Any:
    """The schema's type (the first non-null one of a list; guessed from its keywords when absent)."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    return kind


def _scalar(kind: Any, schema: dict[str, Any], seed: int) -> Any:
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        value = max(int(low) + 1, 1 + seed % 90)
        if isinstance(high, int | float):
            value = min(value, int(high) - 1 if "exclusiveMaximum" in schema else int(high))
        return value if kind == "integer" else value + 0.5 if high is None or value + 0.5 <= high else value
    if kind == "boolean":
        return seed % 2 == 0
    if kind == "null":
        return None
    formats: dict[Any, str] = {
        "date": "2026-01-15",
        "date-time": "2026-01-15T10:30:00Z",
        "email": "ada@example.com",
        "uri": "https://example.com/",
    }
    return formats.get(schema.get("format"), vocab.WORDS[seed % len(vocab.WORDS)])


def json_pieces(text: str) -> list[str]:
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]


def _after_tool_result(messages: list[dict[str, Any]]) -> bool:
    return bool(messages) and messages[-1].get("role") == "tool"


def tool_asked_for(names: list[str], messages: list[Any]) -> int:
    """Which tool a model would call unprompted: the first one whose name the last user turn mentions
    (as a word, any case: "read the file" asks for ``Read``), else the first one. How a client of the
    mock asks for a particular tool call (a coding agent's tools list often starts with one it cannot
    run from a prompt, such as a sub-agent or a deferred-tool placeholder)."""
    user_turns = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    text = " ".join(_texts(user_turns[-1].get("content"))) if user_turns else ""
    words = {word.lower() for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)}
    return next((index for index, name in enumerate(names) if name.lower() in words), 0)


def chosen_function(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The function (``{"name", "parameters"}``) the reply calls, or None for a text reply."""
    functions = [
        t["function"]
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
    ]
    choice = body.get("tool_choice")
    if not functions or choice == "none":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        return next((f for f in functions if f["name"] == wanted), functions[0])
    asked = functions[tool_asked_for([f["name"] for f in functions], messages)]
    if choice == "required":
        return asked
    return None if _after_tool_result(messages) else asked


def _texts(content: Any, depth: int = 0) -> Iterator[str]:
    """The text of a message's content: a string, or parts/blocks with ``text`` (and ``content``,
    as tool results nest it), in order."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list) and depth < MAX_DEPTH:
        for part in content:
            yield from _texts(part, depth + 1)
    elif isinstance(content, dict) and depth < MAX_DEPTH:
        yield from _texts(content.get("text"), depth + 1)
        yield from _texts(content.get("content"), depth + 1)


def _object_at(text: str, start: int) -> Any:
    """The JSON value, or else the Python dict literal (``f"{Model.model_json_schema()}"``), that
    starts at ``text[start]`` (None if neither does)."""
    try:
        return json.JSONDecoder().raw_decode(text, start)[0]
    except (ValueError, RecursionError):
        pass
    depth = 0
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            try:
                return ast.literal_eval(text[start : end + 1])
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return None
    return None


def described_schema(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first object schema (a ``{...}`` with ``properties``) the prompt writes out."""
    for text in (t for message in messages if isinstance(message, dict) for t in _texts(message.get("content"))):
        start = text.find("{")
        for _ in range(MAX_SCHEMA_ATTEMPTS):
            if start == -1:
                break
            found = _object_at(text, start)
            if isinstance(found, dict) and isinstance(found.get("properties"), dict) and found["properties"]:
                return found
            start = text.find("{", start + 1)
    return None


def described_object(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What a model in JSON mode answers when the prompt describes the object's schema: a value of
    that schema (None: the prompt describes none). Shared by every dialect of the mock."""
    schema = described_schema(messages)
    if schema is None:
        return None
    seed = hashlib.sha256(json.dumps(messages, sort_keys=True, default=str).encode()).digest()[0]
    value = value_for_schema(schema, seed)
    return value if isinstance(value, dict) else None


def structured_text(body: dict[str, Any], messages: list[dict[str, Any]], text_pieces: list[str]) -> str | None:
    """The JSON reply ``response_format`` asks for (None: a plain text reply)."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        described = described_object(messages)
        return json.dumps(described if described is not None else {"answer": "".join(text_pieces).strip()})
    spec = response_format.get("json_schema")
    if response_format.get("type") == "json_schema" and isinstance(spec, dict):
        seed = vocab.messages_digest(messages)[0]
        return json.dumps(value_for_schema(spec.get("schema") or {"type": "object"}, seed))
    return None


def arguments_for(function: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return json.dumps(value_for_schema(parameters, vocab.messages_digest(messages)[0]))
