"""Exceptions of the logic layer, each with the HTTP status it maps to.

Authentication (``logic.auth`` and ``jwt_auth`` raise them; the authorizer and the proxy's
function-URL path answer them) and the keys API (:class:`KeysError`). A leaf module: it imports
only the error shapes, so ``jwt_auth`` and ``logic.auth`` need not import each other.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from quotagate.edge_errors import INVALID_CREDENTIAL, EdgeError, missing_credential
from quotagate.errors import GatewayError, upstream_error
from quotagate.identity_sources import DEFAULT_IDENTITY_SOURCES

if TYPE_CHECKING:
    from collections.abc import Sequence


class MissingCredential(Exception):
    """No well-formed credential in the identity sources."""

    status = HTTPStatus.UNAUTHORIZED

    def __init__(self, identity_sources: Sequence[str] = DEFAULT_IDENTITY_SOURCES) -> None:
        super().__init__("missing credential")
        self.identity_sources = tuple(identity_sources)

    def gateway_error(self) -> GatewayError:
        return _as_gateway_error(missing_credential(self.identity_sources))


def _as_gateway_error(error: EdgeError) -> GatewayError:
    return GatewayError(error.status, error.message, error.type, error.code)


class AccessDenied(Exception):
    """A credential was presented but is not acceptable (HTTP 401, like API Gateway's answer to the
    authorizer's Deny: see quotagate.edge_errors).

    ``reason`` is a short machine-readable code for logs and metrics; ``key_id`` (never secret) is set
    when the credential named a key. Neither is meant for the client: the client sees one generic
    message, whatever the reason.
    """

    status = HTTPStatus.UNAUTHORIZED

    def __init__(self, reason: str, key_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id

    def gateway_error(self) -> GatewayError:
        return _as_gateway_error(INVALID_CREDENTIAL)


class AuthUnavailable(Exception):
    """A dependency needed to decide failed (key store, JWKS endpoint): not the caller's fault."""

    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def gateway_error(self) -> GatewayError:
        return upstream_error("Authentication is temporarily unavailable.", status=self.status, code="auth_unavailable")


class KeysError(Exception):
    """A request the keys API refuses. ``code`` is stable and machine-readable; ``message`` is safe
    to show to the caller (never contains a key or a hash)."""

    def __init__(self, code: str, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"KeysError({self.code!r}, {self.message!r}, {self.status})"
