"""Fault-injection specs for the mock model server.

A spec is written like a query string: ``key=value`` pairs joined by ``&`` (``,`` and ``;`` are
accepted too), e.g. ``status=429&retry_after=2`` or ``delay_first_byte=1.5&drop_after=3``.
It can come from (lowest to highest precedence, later ones override earlier keys):

1. ``MockSettings.default_fault`` (every request),
2. the model name, after an ``@``: ``"mock-gpt@status=503"``,
3. the ``x-mock-fault`` request header,
4. the ``mock_fault`` body field (a spec string, or an object such as ``{"status": 503}``).

Keys:

``status=N``            answer with HTTP status N (400-599) and an OpenAI-shaped error body.
``code=S``              the error's ``code`` (default by status: 429 -> ``rate_limit_exceeded``,
                        ``code=insufficient_quota`` for the non-retryable budget 429).
``retry_after=S``       seconds for the ``retry-after`` header of a 429/503 (default 1).
``delay_first_byte=S``  wait S seconds before sending any byte (headers included).
``drop_after=N``        stream: close the connection abruptly after the role chunk and N token
                        chunks (no finish chunk, no usage, no ``[DONE]``, no terminating chunk);
                        non-stream: after N token times, send headers and part of the body, then
                        close.
``omit_usage=1``        no ``usage`` in the non-stream body, no usage chunk in a stream.
``token_delay=S``       seconds between tokens for this request.
``tokens=N``            reply length in tokens (before ``max_tokens`` truncation).
``real_billing=1``      bill the prompt like the real providers: tool/function definitions,
                        ``response_format`` schemas, images and audio are prompt tokens (see
                        :mod:`quotagate_tools.mock.billing`), not only the text of the messages.
``cap_field=F``         which output cap the mock honours: ``any`` (default: ``max_completion_tokens``,
                        else ``max_tokens``), ``max_tokens`` (an older OpenAI-compatible server that
                        ignores ``max_completion_tokens``), ``max_completion_tokens`` (an OpenAI reasoning
                        model: ``max_tokens`` is refused with a 400), ``none`` (a provider that ignores
                        every cap and generates its configured length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

FAULT_HEADER = "x-mock-fault"
FAULT_BODY_FIELD = "mock_fault"
MODEL_FAULT_SEPARATOR = "@"

MAX_DELAY_SECONDS = 3600.0
MAX_TOKENS = 65_536
CapField = Literal["any", "max_tokens", "max_completion_tokens", "none"]
CAP_FIELDS: tuple[str, ...] = get_args(CapField)


class FaultSpecError(ValueError):
    """A fault spec that cannot be parsed."""


@dataclass(frozen=True)
class FaultSpec:
    """Parsed fault spec. ``None`` means "not set" (so specs can be layered with :meth:`merge`)."""

    status: int | None = None
    code: str | None = None
    retry_after: float | None = None
    delay_first_byte: float | None = None
    drop_after: int | None = None
    omit_usage: bool | None = None
    token_delay: float | None = None
    tokens: int | None = None
    real_billing: bool | None = None
    cap_field: CapField | None = None

    def merge(self, other: FaultSpec) -> FaultSpec:
        """A spec with ``other``'s set values overriding this one's."""
        changes = {f.name: getattr(other, f.name) for f in fields(other)}
        changes = {name: value for name, value in changes.items() if value is not None}
        return replace(self, **changes)

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def to_spec(self) -> str:
        """The canonical spec string (round-trips through :func:`parse_fault_spec`)."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool):
                value = int(value)
            parts.append(f"{f.name}={value}")
        return "&".join(parts)


def _int(key: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise FaultSpecError(f"fault {key!r} needs an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise FaultSpecError(f"fault {key!r} must be between {low} and {high}, got {value}")
    return value


def _seconds(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise FaultSpecError(f"fault {key!r} needs a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_DELAY_SECONDS:
        raise FaultSpecError(f"fault {key!r} must be between 0 and {MAX_DELAY_SECONDS:g} seconds")
    return value


_TRUE = {"1", "true", "yes", "on", ""}
_FALSE = {"0", "false", "no", "off"}


def _bool(key: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise FaultSpecError(f"fault {key!r} needs a boolean (1/0), got {raw!r}")


def _code(key: str, raw: str) -> str:
    if not raw or len(raw) > 100 or not all(c.isalnum() or c in "_-." for c in raw):
        raise FaultSpecError(f"fault {key!r} must be a short identifier, got {raw!r}")
    return raw


def _cap_field(key: str, raw: str) -> str:
    if raw not in CAP_FIELDS:
        raise FaultSpecError(f"fault {key!r} must be one of {', '.join(CAP_FIELDS)}, got {raw!r}")
    return raw


_PARSERS: dict[str, Any] = {
    "status": lambda k, v: _int(k, v, 400, 599),
    "code": _code,
    "retry_after": _seconds,
    "delay_first_byte": _seconds,
    "drop_after": lambda k, v: _int(k, v, 0, MAX_TOKENS),
    "omit_usage": _bool,
    "token_delay": _seconds,
    "tokens": lambda k, v: _int(k, v, 0, MAX_TOKENS),
    "real_billing": _bool,
    "cap_field": _cap_field,
}
FAULT_KEYS: tuple[str, ...] = tuple(_PARSERS)


def _dict_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def parse_fault_spec(spec: str | dict[str, Any] | FaultSpec | None) -> FaultSpec:
    """Parse ``"status=503&delay_first_byte=1"`` (or a dict of the same keys) into a FaultSpec.

    Raises :class:`FaultSpecError` for unknown keys or bad values. A bare key means ``key=1``
    (``"omit_usage"``); an empty spec is an empty FaultSpec.
    """
    if spec is None:
        return FaultSpec()
    if isinstance(spec, FaultSpec):
        return spec
    if isinstance(spec, dict):
        items = [(str(k), _dict_value(v)) for k, v in spec.items()]
    elif isinstance(spec, str):
        items = []
        for part in spec.replace(",", "&").replace(";", "&").split("&"):
            part = part.strip()
            if not part:
                continue
            key, _, value = part.partition("=")
            items.append((key.strip(), value.strip()))
    else:
        raise FaultSpecError(f"a fault spec must be a string or an object, not {type(spec).__name__}")
    values: dict[str, Any] = {}
    for key, raw in items:
        parser = _PARSERS.get(key)
        if parser is None:
            raise FaultSpecError(f"unknown fault {key!r} (known: {', '.join(FAULT_KEYS)})")
        if raw == "" and key not in ("omit_usage", "real_billing"):
            raise FaultSpecError(f"fault {key!r} needs a value")
        values[key] = parser(key, raw)
    return FaultSpec(**values)


def split_model(model: str) -> tuple[str, str]:
    """``"mock-gpt@status=503"`` -> ``("mock-gpt", "status=503")``; no ``@`` -> ``(model, "")``."""
    base, _, spec = model.partition(MODEL_FAULT_SEPARATOR)
    return base, spec
