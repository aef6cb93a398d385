"""The errors the edge gives for authentication, defined once: the CDK stack's API Gateway gateway
responses, the local API Gateway emulator and the proxy's function-URL path all answer with these.

* No well-formed credential in the identity sources (API Gateway's UNAUTHORIZED, the authorizer's
  ``Exception("Unauthorized")``): 401 ``invalid_api_key``, naming where the key goes.
* A credential that is not acceptable — wrong, unknown, revoked, disabled, expired, rotated out (the
  authorizer's Deny, which API Gateway reports as ACCESS_DENIED): also 401 ``invalid_api_key``, the
  status the openai SDK turns into ``AuthenticationError``. 403 is kept for callers who are
  authenticated but not allowed what they asked (a model outside their plan).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from quotagate.identity_sources import missing_credential_message

# Every edge error carries the request id here (API Gateway's $context.requestId), like the proxy's
# answers: the openai SDK reads an error's request id from it.
REQUEST_ID_HEADER = "x-request-id"


@dataclass(frozen=True)
class EdgeError:
    status: int
    message: str
    type: str
    code: str

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code}}


def missing_credential(identity_sources: Iterable[str]) -> EdgeError:
    return EdgeError(401, missing_credential_message(identity_sources), "invalid_request_error", "invalid_api_key")


# One message whatever the reason, so a caller learns nothing about a key it does not hold.
INVALID_CREDENTIAL = EdgeError(
    401, "Incorrect API key provided, or the key is expired or revoked.", "invalid_request_error", "invalid_api_key"
)
