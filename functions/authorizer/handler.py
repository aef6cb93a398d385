"""Lambda REQUEST authorizer for the REST API.

Thin: read the credential from the identity-source headers only (API Gateway caches the answer
keyed by their values: see :mod:`quotagate.identity_sources`), authenticate it with the shared core
(:mod:`quotagate.logic.auth`), and shape API Gateway's answer:

* no well-formed credential in the identity sources
                             -> ``raise Exception("Unauthorized")`` (API Gateway answers 401)
* credential not acceptable  -> Deny policy (API Gateway's ACCESS_DENIED, configured as a 401
                               invalid_api_key: see quotagate.edge_errors)
* valid                      -> Allow policy with the identity as context (strings only)
* key store / JWKS failure   -> the error propagates (API Gateway answers 500 and caches nothing)

API Gateway caches the policy per identity source and reuses it for every method the authorizer
protects, so both Allow and Deny cover the whole API (``<api id>/<stage>/*/*``), never only the
method ARN of the first request.

Credentials are never logged: only the key id (not secret) and the reason for a denial.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger

from quotagate.identity_sources import configured_identity_sources
from quotagate.logic.auth import Authenticator
from quotagate.logic.exceptions import AccessDenied, AuthUnavailable, MissingCredential

logger = Logger(service="quotagate-authorizer")

_authenticator: Authenticator | None = None
_clock: Callable[[], float] = time.time
_lock = threading.Lock()


def _get_authenticator() -> Authenticator:
    """Created on first use (not at import), so tests can start moto and set env vars first."""
    global _authenticator
    if _authenticator is None:
        with _lock:
            if _authenticator is None:
                from quotagate.dal.keys_store import DynamoKeyStore
                from quotagate.jwt_auth import JwtVerifier

                _authenticator = Authenticator(DynamoKeyStore(), JwtVerifier.from_env(), clock=_clock)
    return _authenticator


def reset(clock: Callable[[], float] = time.time) -> None:
    """Drop the cached store/verifier (tests, or local mode after a configuration change); ``clock``
    (wall seconds, for key expiry and rotation grace) lets tests move time."""
    global _authenticator, _clock
    with _lock:
        _authenticator = None
        _clock = clock


def request_headers(event: Mapping[str, Any]) -> dict[str, str]:
    """Lower-cased request headers from a REST REQUEST-authorizer event.

    ``multiValueHeaders`` is authoritative when present: repeated headers are combined with
    ``", "`` (RFC 9110), so two different credentials never silently pick one of them — the
    combined value is not a valid credential.
    """
    headers: dict[str, str] = {}
    single = event.get("headers")
    if isinstance(single, Mapping):
        for name, value in single.items():
            if isinstance(name, str) and isinstance(value, str):
                headers[name.lower()] = value
    multi = event.get("multiValueHeaders")
    if isinstance(multi, Mapping):
        combined: dict[str, list[str]] = {}
        for name, values in multi.items():
            if not isinstance(name, str) or not isinstance(values, list):
                continue
            combined.setdefault(name.lower(), []).extend(v for v in values if isinstance(v, str))
        for name, values in combined.items():
            distinct = list(dict.fromkeys(values))
            if distinct:
                headers[name] = ", ".join(distinct)
    return headers


def api_wide_resource(method_arn: str) -> str:
    """``arn:<partition>:execute-api:<region>:<account>:<api id>/<stage>/*/*`` from a method ARN."""
    parts = method_arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "execute-api":
        raise ValueError("not an execute-api method ARN")
    api_id, _, rest = parts[5].partition("/")
    stage = rest.split("/", 1)[0]
    if not api_id or not stage:
        raise ValueError("method ARN without API id or stage")
    return f"arn:{parts[1]}:execute-api:{parts[3]}:{parts[4]}:{api_id}/{stage}/*/*"


def _policy(principal_id: str, effect: str, resource: str) -> dict[str, Any]:
    return {
        "principalId": principal_id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
    }


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.append_keys(request_id=getattr(context, "aws_request_id", None))
    resource = api_wide_resource(str(event.get("methodArn", "")))
    try:
        identity = _get_authenticator().authenticate_headers(request_headers(event), configured_identity_sources())
    except MissingCredential:
        logger.info("no credential presented")
        raise Exception("Unauthorized") from None  # the exact message API Gateway maps to 401
    except AccessDenied as denied:
        logger.warning("access denied", extra={"reason": denied.reason, "key_id": denied.key_id})
        return _policy(denied.key_id or "anonymous", "Deny", resource)
    except AuthUnavailable as error:
        logger.error("authentication unavailable", extra={"reason": error.reason})
        raise
    logger.info(
        "access allowed",
        extra={"key_id": identity.key_id, "tenant": identity.tenant, "auth_type": identity.auth_type},
    )
    response = _policy(identity.key_id, "Allow", resource)
    response["context"] = identity.to_context()
    return response
