"""Lambda REQUEST authorizer for the REST API.

Thin: read the one credential of the request from the credential headers (``Authorization: Bearer``
and ``x-api-key`` by default; two different credentials, a repeated header or a malformed value are
refused), authenticate it with the shared core (:mod:`quotagate.logic.auth`) through the
authorizer's own cache keyed by that credential (:mod:`quotagate.logic.auth_cache`; API Gateway
caches nothing: see :mod:`quotagate.identity_sources`), and shape API Gateway's answer:

* no well-formed credential in the identity sources
                             -> ``raise Exception("Unauthorized")`` (API Gateway answers 401)
* credential not acceptable  -> Deny policy (API Gateway's ACCESS_DENIED, configured as a 401
                               invalid_api_key: see quotagate.edge_errors)
* valid                      -> Allow policy with the identity as context (strings only)
* key store / JWKS failure   -> the error propagates (API Gateway answers 500 and caches nothing)

Both Allow and Deny cover the whole API (``<api id>/<stage>/*/*``), never only the method ARN of the
first request (so a result cache turned on in API Gateway could not serve a wrong method either).

Credentials are never logged: only the key id (not secret) and the reason for a denial.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger

from quotagate import settings
from quotagate.identity_sources import configured_identity_sources
from quotagate.logic.auth import Authenticator, credential_from_headers
from quotagate.logic.auth_cache import AuthAnswerCache
from quotagate.logic.exceptions import AccessDenied, AuthUnavailable, MissingCredential

logger = Logger(service="quotagate-authorizer")

_authenticator: Authenticator | None = None
_answers: AuthAnswerCache | None = None
_clock: Callable[[], float] = time.time
_lock = threading.Lock()


def _get_authenticator() -> tuple[Authenticator, AuthAnswerCache]:
    """Created on first use (not at import), so tests can start moto and set env vars first."""
    global _authenticator, _answers
    if _authenticator is None or _answers is None:
        with _lock:
            if _authenticator is None or _answers is None:
                from quotagate.dal.keys_store import DynamoKeyStore
                from quotagate.jwt_auth import JwtVerifier

                _authenticator = Authenticator(DynamoKeyStore(), JwtVerifier.from_env(), clock=_clock)
                ttl = settings.env(settings.AUTHORIZER_CACHE_SECONDS)
                _answers = AuthAnswerCache(
                    float(ttl) if ttl else settings.DEFAULT_AUTHORIZER_CACHE_SECONDS, clock=_clock
                )
    return _authenticator, _answers


def reset(clock: Callable[[], float] = time.time) -> None:
    """Drop the cached store/verifier and every cached answer (tests, or local mode after a
    configuration change); ``clock`` (wall seconds, for key expiry, rotation grace and the answer
    cache) lets tests move time."""
    global _authenticator, _answers, _clock
    with _lock:
        _authenticator = None
        _answers = None
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
    authenticator, answers = _get_authenticator()
    sources = configured_identity_sources()
    try:
        credential = credential_from_headers(request_headers(event), sources)
        if credential is None:
            raise MissingCredential(sources)
        identity = answers.authenticate(credential, authenticator.authenticate)
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
