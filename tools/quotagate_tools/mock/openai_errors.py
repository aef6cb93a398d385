"""OpenAI-shaped errors of the mock (chat completions, models, embeddings): the error body, the
errors a ``status=`` fault injects, the API key check and the JSON body reader. Other dialects
translate :class:`OpenAIError` into their own shape where they share these readers."""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse

from quotagate_tools.mock.exchange import Rejection
from quotagate_tools.mock.faults import FaultSpec, FaultSpecError, parse_fault_spec

if TYPE_CHECKING:
    from starlette.requests import Request

    from quotagate_tools.mock.settings import MockSettings


class OpenAIError(Rejection):
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# status -> (type, default code, message) for injected errors, modelled on OpenAI's own.
INJECTED_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (injected by the mock)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (injected by the mock)."),
    403: ("permission_error", "permission_denied", "You are not allowed to do this (injected by the mock)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (injected by the mock)."),
    408: ("timeout", "timeout", "Request timed out (injected by the mock)."),
    409: ("invalid_request_error", "conflict", "Conflict (injected by the mock)."),
    413: ("invalid_request_error", "request_too_large", "Request too large (injected by the mock)."),
    422: ("invalid_request_error", None, "Unprocessable request (injected by the mock)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (injected by the mock)."),
    500: ("server_error", None, "The server had an error processing your request (injected by the mock)."),
    502: ("server_error", "bad_gateway", "Bad gateway (injected by the mock)."),
    503: ("server_error", "overloaded", "The engine is currently overloaded (injected by the mock)."),
    504: ("server_error", "timeout", "Gateway timeout (injected by the mock)."),
}


def injected_error(fault: FaultSpec) -> OpenAIError:
    assert fault.status is not None
    status = fault.status
    fallback = ("invalid_request_error" if status < 500 else "server_error", None, f"Error {status} (mock).")
    type_, code, message = INJECTED_ERRORS.get(status, fallback)
    if fault.code is not None:
        code = fault.code
        if status == 429 and code == "insufficient_quota":
            type_ = "insufficient_quota"
            message = "You exceeded your current quota (injected by the mock)."
    headers = {}
    if status in (429, 503):
        retry_after = fault.retry_after if fault.retry_after is not None else 1
        headers["retry-after"] = f"{retry_after:g}"
    return OpenAIError(status, message, type_, code, None, headers)


def check_auth(request: Request, settings: MockSettings) -> None:
    if not settings.api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer":
        presented = request.headers.get("api-key", "")
    if not presented or not hmac.compare_digest(presented.strip().encode(), settings.api_key.encode()):
        raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")


async def read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.")
    return body


def parse_fault(source: Any, param: str) -> FaultSpec:
    try:
        return parse_fault_spec(source)
    except FaultSpecError as exc:
        raise OpenAIError(400, f"Invalid mock fault spec in {param}: {exc}", param=param) from None
