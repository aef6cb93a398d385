"""What a request asks of the mock besides its API's own fields: its fault (from the settings, the
model suffix, the ``x-mock-fault`` header and the ``mock_fault`` body field) and its reply pace (the
``mock_reply_tokens`` and ``mock_token_delay`` body fields). Every dialect reads them alike."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from quotagate_tools.mock.faults import FAULT_BODY_FIELD, FAULT_HEADER, MAX_TOKENS, FaultSpec
from quotagate_tools.mock.openai_errors import parse_fault
from quotagate_tools.mock.settings import MAX_TOKEN_DELAY, MockSettings

REPLY_TOKENS_FIELD = "mock_reply_tokens"
TOKEN_DELAY_FIELD = "mock_token_delay"  # noqa: S105 (a field name)
# (spec, where it came from) -> the fault, or the API's error for a bad spec.
FaultParser = Callable[[Any, str], FaultSpec]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def request_fault(
    settings: MockSettings,
    model_fault: str | None,
    header_fault: str | None,
    body: Mapping[str, Any],
    parse: FaultParser = parse_fault,
    model_param: str = "model",
) -> FaultSpec:
    """The fault a request asks for, each source over the one before: the settings' default, the
    model suffix, the x-mock-fault header, the mock_fault body field. ``parse`` raises the API's
    error for a bad spec (named by where it came from)."""
    fault = parse(settings.default_fault, "settings.default_fault")
    fault = fault.merge(parse(model_fault, model_param))
    fault = fault.merge(parse(header_fault, FAULT_HEADER))
    return fault.merge(parse(body.get(FAULT_BODY_FIELD), FAULT_BODY_FIELD))


def reply_pace(
    body: Mapping[str, Any],
    settings: MockSettings,
    fault: FaultSpec,
    invalid: Callable[[str, str], Exception],
) -> tuple[int, float]:
    """(reply length in tokens, seconds between tokens): the body's test fields, else the fault's,
    else the settings'. ``invalid(field, problem)`` is the API's error for a bad field."""
    length = settings.reply_tokens if fault.tokens is None else fault.tokens
    requested = body.get(REPLY_TOKENS_FIELD)
    if requested is not None:
        if not is_int(requested) or not 0 <= requested <= MAX_TOKENS:
            raise invalid(REPLY_TOKENS_FIELD, f"must be an integer from 0 to {MAX_TOKENS}")
        length = requested
    token_delay = settings.token_delay if fault.token_delay is None else fault.token_delay
    delay = body.get(TOKEN_DELAY_FIELD)
    if delay is not None:
        if not is_number(delay) or not 0 <= delay <= MAX_TOKEN_DELAY:
            raise invalid(TOKEN_DELAY_FIELD, f"must be a number of seconds from 0 to {MAX_TOKEN_DELAY:g}")
        token_delay = float(delay)
    return length, token_delay
