"""The errors the edge answers itself, defined once: the CDK stack's API Gateway gateway responses,
the local API Gateway emulator and the proxy's function-URL path all answer with these.

* No well-formed credential in the identity sources (API Gateway's UNAUTHORIZED, the authorizer's
  ``Exception("Unauthorized")``): 401 ``invalid_api_key``, naming where the key goes.
* A credential that is not acceptable — wrong, unknown, revoked, disabled, expired, rotated out (the
  authorizer's Deny, which API Gateway reports as ACCESS_DENIED): also 401 ``invalid_api_key``, the
  status the openai SDK turns into ``AuthenticationError``. 403 is kept for callers who are
  authenticated but not allowed what they asked (a model outside their plan).

**One body for both protocols.** A gateway response cannot vary by path (its template is not run
through VTL: API Gateway only substitutes variables), yet ``/v1/messages`` callers use the anthropic
SDK and everyone else the openai SDK. So every edge error is
``{"type": "error", "error": {"type", "message", "param", "code"}}``, which both read:

* the anthropic SDK takes ``error.type`` (one of Anthropic's error types) and ``error.message``, and
  its request id from the ``request-id`` header;
* the openai SDK takes ``body["error"]`` and reads ``message``, ``code`` (``invalid_api_key``,
  ``rate_limit_exceeded``: what OpenAI clients branch on), ``param`` and ``type``, and its request id
  from ``x-request-id``.

``type`` is therefore Anthropic's (``authentication_error`` for a refused key, where OpenAI says
``invalid_request_error``); the exception class of both SDKs follows the status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from quotagate.identity_sources import missing_credential_message

if TYPE_CHECKING:
    from collections.abc import Iterable

# Every edge error carries the request id in both SDKs' headers (API Gateway's $context.requestId),
# like the proxy's answers: the openai SDK reads an error's request id from x-request-id, the
# anthropic SDK from request-id.
REQUEST_ID_HEADER = "x-request-id"
ANTHROPIC_REQUEST_ID_HEADER = "request-id"
REQUEST_ID_HEADERS: Final = (REQUEST_ID_HEADER, ANTHROPIC_REQUEST_ID_HEADER)
# A refused credential or permission does not change by retrying: the openai and anthropic SDKs (and
# Claude Code, which otherwise retries a 401 ten times over three minutes) stop at once on it.
SHOULD_RETRY_HEADER = "x-should-retry"
NO_RETRY_STATUSES: Final = frozenset({401, 403})


def no_retry_headers(status: int | None) -> dict[str, str]:
    """``x-should-retry: false`` for the statuses no retry can change (401, 403), else nothing."""
    return {SHOULD_RETRY_HEADER: "false"} if status in NO_RETRY_STATUSES else {}


# Anthropic's error types that the edge uses (the openai SDK reads ``code`` to tell causes apart).
EdgeErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
]
# API Gateway's gateway response types this stack defines.
GatewayResponseType = Literal[
    "UNAUTHORIZED",
    "ACCESS_DENIED",
    "MISSING_AUTHENTICATION_TOKEN",
    "THROTTLED",
    "REQUEST_TOO_LARGE",
    "AUTHORIZER_FAILURE",
    "INTEGRATION_FAILURE",
    "DEFAULT_4XX",
    "DEFAULT_5XX",
]
# Seconds a client should wait before retrying an answer that says "try again" (the Retry-After header
# both SDKs honour): stage throttling, a throttled proxy, API Gateway's other 5xx.
RETRY_AFTER_SECONDS: Final = 2
# API Gateway's own error message, which it substitutes already JSON-quoted.
GATEWAY_MESSAGE_VARIABLE: Final = "$context.error.messageString"


def error_body(message: Any, error_type: EdgeErrorType, code: str | None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message, "param": None, "code": code}}


@dataclass(frozen=True)
class EdgeError:
    status: int
    message: str
    type: EdgeErrorType
    code: str | None
    retry_after: bool = False  # answered with Retry-After: RETRY_AFTER_SECONDS

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code)


@dataclass(frozen=True)
class GatewayResponse:
    """One gateway response of the stack: ``status`` None keeps API Gateway's status, ``message``
    None its own message."""

    status: int | None
    message: str | None
    type: EdgeErrorType
    code: str | None
    retry_after: bool = False

    def template(self) -> str:
        """The response template (plain variable substitution, no VTL)."""
        placeholder = "__QG_GATEWAY_MESSAGE__"
        text = json.dumps(error_body(self.message or placeholder, self.type, self.code), separators=(",", ":"))
        return text.replace(json.dumps(placeholder), GATEWAY_MESSAGE_VARIABLE) if self.message is None else text

    @classmethod
    def of(cls, error: EdgeError) -> GatewayResponse:
        return cls(error.status, error.message, error.type, error.code, error.retry_after)


def missing_credential(identity_sources: Iterable[str]) -> EdgeError:
    return EdgeError(401, missing_credential_message(identity_sources), "authentication_error", "invalid_api_key")


# One message whatever the reason, so a caller learns nothing about a key it does not hold.
INVALID_CREDENTIAL = EdgeError(
    401, "Incorrect API key provided, or the key is expired or revoked.", "authentication_error", "invalid_api_key"
)
# A REST API answers an unknown path or method with MISSING_AUTHENTICATION_TOKEN (403 by default): a 404.
UNKNOWN_URL = EdgeError(404, "Unknown request URL or method.", "not_found_error", "unknown_url")
# The authorizer crashed or timed out (not the caller's fault; not cached).
AUTHORIZER_FAILURE = EdgeError(500, "The authorizer failed. Retry shortly.", "api_error", "authorizer_error")

# The stage's rate limit (quotagate:throttleRateLimit / throttleBurstLimit).
GATEWAY_THROTTLED = EdgeError(
    429,
    "Too many requests to the gateway. Retry after a short wait.",
    "rate_limit_error",
    "rate_limit_exceeded",
    retry_after=True,
)
# The proxy function could not be invoked: Lambda throttled it (its reserved concurrency, or the
# account's concurrency, is in use by open streams) — API Gateway's INTEGRATION_FAILURE, which would
# otherwise be a bare 500. Not the caller's fault, and over soon: 503 with Retry-After.
PROXY_AT_CAPACITY = EdgeError(
    503,
    "The gateway is at capacity. Retry after a short wait.",
    "overloaded_error",
    "service_unavailable",
    retry_after=True,
)

FIXED_RESPONSES: Final[dict[GatewayResponseType, GatewayResponse]] = {
    "MISSING_AUTHENTICATION_TOKEN": GatewayResponse.of(UNKNOWN_URL),
    "THROTTLED": GatewayResponse.of(GATEWAY_THROTTLED),
    "INTEGRATION_FAILURE": GatewayResponse.of(PROXY_AT_CAPACITY),
    "REQUEST_TOO_LARGE": GatewayResponse(
        413, "The request body is too large.", "request_too_large", "request_too_large"
    ),
    "AUTHORIZER_FAILURE": GatewayResponse.of(AUTHORIZER_FAILURE),
    "DEFAULT_4XX": GatewayResponse(None, None, "invalid_request_error", None),
    # Any other 5xx API Gateway makes itself keeps its status and gains Retry-After.
    "DEFAULT_5XX": GatewayResponse(None, None, "api_error", None, retry_after=True),
}


def gateway_responses(identity_sources: Iterable[str]) -> dict[GatewayResponseType, GatewayResponse]:
    """Every gateway response of the stack; the two authentication ones name the identity sources."""
    return {
        "UNAUTHORIZED": GatewayResponse.of(missing_credential(identity_sources)),
        "ACCESS_DENIED": GatewayResponse.of(INVALID_CREDENTIAL),
        **FIXED_RESPONSES,
    }
