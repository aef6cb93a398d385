"""Validation of an OpenAI chat completion request body, before any quota or upstream is touched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quotagate import settings, strict_json, wire
from quotagate.errors import GatewayError, invalid_request
from quotagate.logic import parameters
from quotagate.logic.tool_turns import check_tool_turns

if TYPE_CHECKING:
    from collections.abc import Callable

    from quotagate.wire.schema import Obj

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# Body fields the built-in mock model server reads (quotagate_tools.mock); dropped from clients' bodies.
MOCK_CONTROL_PREFIX = "mock_"
MAX_CHOICES = 8
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass
class ChatRequest:
    body: dict[str, Any]  # what is forwarded upstream (the model name is replaced by the router)
    model: str
    stream: bool
    client_wants_usage: bool  # stream_options.include_usage as the client sent it
    max_completion_tokens: int | None  # as the client sent them
    max_tokens: int | None
    choices: int  # n
    dropped: tuple[str, ...] = ()  # the fields removed (named in x-quotagate-dropped-params)

    @property
    def max_output_tokens(self) -> int | None:
        """The client's output cap: the smaller of the two cap fields it sent, if any."""
        caps = [cap for cap in (self.max_completion_tokens, self.max_tokens) if cap is not None]
        return min(caps) if caps else None

    @property
    def cap_param(self) -> str:
        """The field the client's cap came from (for error messages)."""
        if self.max_tokens is not None and (
            self.max_completion_tokens is None or self.max_tokens < self.max_completion_tokens
        ):
            return "max_tokens"
        return "max_completion_tokens"

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body["messages"]


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"Request body is larger than {limit} bytes.", "invalid_request_error", "request_too_large"
    )


def _positive_int(body: dict[str, Any], name: str, upper: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (upper and value > upper):
        bound = f" and at most {upper}" if upper else ""
        raise invalid_request(f"'{name}' must be an integer of at least 1{bound}.", param=name, code="invalid_value")
    return value


def parse_model_request(raw: bytes, max_bytes: int) -> tuple[dict[str, Any], str]:
    """The JSON object of a request body and its ``model``: what every endpoint checks first.
    Strict (see :mod:`quotagate.strict_json`): NaN, Infinity, out-of-range numbers, lone
    surrogates and deep nesting are refused here, before anything is reserved."""
    if len(raw) > max_bytes:
        raise body_too_large(max_bytes)
    try:
        body = strict_json.loads(raw)
    except strict_json.StrictJSONError as error:
        raise invalid_request(error.message, code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    # The mock model server's controls (``mock_fault``, ``mock_token_delay``, ``mock_reply_tokens``)
    # are the operator's (a model suffix in the configuration), never a caller's: forwarded, they
    # let any client make the target fail or stall and open the circuit breaker shared by every
    # tenant. Only the integration tests' harness forwards them (settings.FORWARD_MOCK_CONTROLS).
    if not settings.forward_mock_controls():
        for name in [name for name in body if name.startswith(MOCK_CONTROL_PREFIX)]:
            del body[name]
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid_request(
            "'model' is required and must be a non-empty string.", param="model", code="invalid_value"
        )
    return body, model


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    """Each message's role and content shape (a wrong type is a 400 naming its path)."""
    if not isinstance(messages, list) or not messages:
        raise invalid_request("'messages' must be a non-empty array.", param="messages", code="invalid_value")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid_request(f"'{where}' must be an object.", param=where, code="invalid_value")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:  # a list or object is unhashable
            raise invalid_request(
                f"'{where}.role' must be one of {sorted(_ROLES)}.", param=f"{where}.role", code="invalid_value"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise invalid_request(
                f"'{where}.content' must be a string or an array of parts.",
                param=f"{where}.content",
                code="invalid_value",
            )
        for part_index, part in enumerate(content if isinstance(content, list) else []):
            here = f"{where}.content[{part_index}]"
            if not isinstance(part, dict):
                raise invalid_request(f"'{here}' must be an object.", param=here, code="invalid_value")
            if not isinstance(part.get("type"), str):
                raise invalid_request(f"'{here}.type' must be a string.", param=f"{here}.type", code="invalid_value")
    return messages


def check_declared(
    declaration: Obj, body: dict[str, Any], model: str, refuses_unknown: Callable[[str], bool] | None
) -> tuple[str, ...]:
    """Validate an OpenAI-protocol body against its declared fields (:mod:`quotagate.wire`): a
    wrong type is a 400 naming its path (``messages[0].role``); the paths removed."""
    from quotagate.wire.schema import WireError  # loaded with the declarations, on the first request

    try:
        dropped = wire.check_body(declaration, body, refuses_unknown is not None and refuses_unknown(model))
    except WireError as error:
        where = wire.openai_path(error.path)
        raise invalid_request(f"{where}: {error.problem}", param=where, code=error.code) from None
    return tuple(wire.openai_path(path) for path in dropped)


def parse_chat_request(
    raw: bytes, max_bytes: int = DEFAULT_MAX_BODY_BYTES, refuses_unknown: Callable[[str], bool] | None = None
) -> ChatRequest:
    """A validated chat completion request; ``refuses_unknown(model)``: whether that model refuses
    undeclared fields (else they are dropped and named)."""
    from quotagate.wire import chat as wire_chat  # on the first request, not at the proxy's start

    body, model = parse_model_request(raw, max_bytes)
    dropped = check_declared(wire_chat.CHAT, body, model, refuses_unknown)

    messages = _check_messages(body.get("messages"))
    check_tool_turns(messages)

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid_request("'stream' must be a boolean.", param="stream", code="invalid_value")

    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise invalid_request("'stream_options' must be an object.", param="stream_options", code="invalid_value")
    if stream_options and not stream:
        raise invalid_request(
            "'stream_options' is only allowed when 'stream' is true.", param="stream_options", code="invalid_value"
        )
    wants_usage = bool(stream_options and stream_options.get("include_usage") is True)

    max_completion = _positive_int(body, "max_completion_tokens")
    max_tokens = _positive_int(body, "max_tokens")

    choices = _positive_int(body, "n", MAX_CHOICES) or 1
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise invalid_request(f"'{name}' must be a number.", param=name, code="invalid_value")
    # One rule whatever the target: OpenAI's ranges, and a well-formed response_format.
    parameters.check_ranges(body)
    parameters.check_response_format(body)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        raise invalid_request("'stop' must be a string or an array of strings.", param="stop", code="invalid_value")

    return ChatRequest(
        body=body,
        model=model,
        stream=stream,
        client_wants_usage=wants_usage,
        max_completion_tokens=max_completion,
        max_tokens=max_tokens,
        choices=choices,
        dropped=dropped,
    )
