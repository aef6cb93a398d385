"""Strict JSON for everything a client sends: the one parser of request bodies (chat, embeddings)
and the one checker of already-decoded keys-API events.

Python's ``json`` module accepts more than JSON and more than the gateway can forward: ``NaN`` and
``Infinity``, numbers of any size (``1e400`` becomes ``inf``, ``10**400`` an int that no float or
DynamoDB number holds), lone surrogates from ``\\ud800`` escapes (they fail only later, when the
text is encoded for an upstream or a log line) and nesting deep enough to raise ``RecursionError``.
Each of those is refused here with :class:`StrictJSONError`, before anything is reserved or
written, so a client's bad input can never surface later as a gateway or upstream failure.

The nesting depth is checked on the raw text without recursion, before ``json.loads`` runs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64  # objects and arrays nested in one another
MAX_NUMBER_CHARS = 100  # characters of one number literal
MAX_ABS_INT = 2**63 - 1  # fits a signed 64-bit integer (DynamoDB, every provider)
MAX_ABS_FLOAT = 1e300

# A JSON string literal (escapes included); what is left outside them is structure and scalars.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class StrictJSONError(ValueError):
    """The input is not JSON the gateway accepts. ``message`` is safe to show to the client (it never
    repeats the input)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _reject_constant(name: str) -> Any:
    raise StrictJSONError(f"'{name}' is not a JSON number: numbers must be finite.")


def _parse_int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise StrictJSONError(f"A number has more than {MAX_NUMBER_CHARS} characters.")
    value = int(literal)
    if abs(value) > MAX_ABS_INT:
        raise StrictJSONError(f"An integer is out of range (at most {MAX_ABS_INT} in magnitude).")
    return value


def _parse_float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise StrictJSONError(f"A number has more than {MAX_NUMBER_CHARS} characters.")
    value = float(literal)
    if not math.isfinite(value) or abs(value) > MAX_ABS_FLOAT:
        raise StrictJSONError(f"A number is out of range (at most {MAX_ABS_FLOAT:g} in magnitude).")
    return value


def _check_depth(text: str) -> None:
    # Cheap when it cannot matter: fewer openers than the bound cannot nest deeper than it.
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    structure = _STRING.sub("", text)
    steps = [_DEPTH_STEP[match] for match in _BRACKETS.findall(structure)]
    if steps and max(accumulate(steps)) > MAX_DEPTH:
        raise StrictJSONError(f"The JSON is nested more than {MAX_DEPTH} levels deep.")


def _check_text(value: Any) -> None:
    """Every string (keys included) must be encodable: no lone surrogates."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise StrictJSONError(
            "The JSON contains a lone surrogate (an unpaired \\ud800-\\udfff escape), which is not valid Unicode text."
        ) from None


def loads(raw: bytes | str) -> Any:
    """Parse UTF-8 JSON strictly. Raises :class:`StrictJSONError` for anything but strict JSON
    within the bounds above."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise StrictJSONError("The request body is not valid UTF-8.") from None
    else:
        text = raw
    _check_depth(text)
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int, parse_float=_parse_float)
    except StrictJSONError:
        raise
    except (ValueError, RecursionError):
        raise StrictJSONError("The request body is not valid JSON.") from None
    if _SURROGATE_ESCAPE.search(text):
        _check_text(value)
    return value


def check_value(value: Any) -> None:
    """Apply the same rules to a value that was already decoded by someone else (a Lambda event):
    only JSON types with string keys, finite numbers in range, text without lone surrogates, nesting
    at most ``MAX_DEPTH``. Iterative: no recursion, whatever the depth."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping | list | tuple):
            if depth >= MAX_DEPTH:
                raise StrictJSONError(f"The JSON is nested more than {MAX_DEPTH} levels deep.")
            if isinstance(item, Mapping):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise StrictJSONError("Object keys must be strings.")
                    _check_scalar(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        else:
            _check_scalar(item)


def _check_scalar(item: Any) -> None:
    if item is None or isinstance(item, bool):
        return
    if isinstance(item, str):
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise StrictJSONError(
                "The JSON contains a lone surrogate (an unpaired \\ud800-\\udfff escape), "
                "which is not valid Unicode text."
            ) from None
    elif isinstance(item, int):
        if abs(item) > MAX_ABS_INT:
            raise StrictJSONError(f"An integer is out of range (at most {MAX_ABS_INT} in magnitude).")
    elif isinstance(item, float):
        if not math.isfinite(item) or abs(item) > MAX_ABS_FLOAT:
            raise StrictJSONError(f"A number is out of range (at most {MAX_ABS_FLOAT:g} in magnitude).")
    else:
        raise StrictJSONError(f"A value of type {type(item).__name__} is not JSON.")
