"""OpenAI-shaped errors. Every error a client sees is built here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quotagate.edge_errors import no_retry_headers


@dataclass
class GatewayError(Exception):
    """An error with the HTTP status and the OpenAI error object a client receives."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)
        # A refused credential or permission does not change by retrying: tell the SDKs so.
        for name, value in no_retry_headers(self.status).items():
            self.headers.setdefault(name, value)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param)


def authentication_error(message: str = "Invalid API key.") -> GatewayError:
    return GatewayError(401, message, "invalid_request_error", "invalid_api_key")


def permission_error(message: str, code: str = "permission_denied") -> GatewayError:
    return GatewayError(403, message, "permission_error", code)


def not_found(message: str, code: str = "not_found", param: str | None = None) -> GatewayError:
    return GatewayError(404, message, "invalid_request_error", code, param)


def upstream_error(message: str, status: int = 502, code: str = "upstream_error") -> GatewayError:
    return GatewayError(status, message, "api_error", code)
