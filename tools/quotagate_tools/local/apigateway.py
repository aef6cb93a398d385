"""Local emulation of the cloud edge: API Gateway (REST, REQUEST authorizer with a result cache,
AWS_PROXY to the proxy app) and Lambda's Invoke API for the keys function.

Everything behind the edge is the real code: the authorizer and keys handlers are the Lambda
handlers themselves, the proxy is the same ASGI app the Lambda Web Adapter serves.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anyio import to_thread

from quotagate.edge_errors import (
    AUTHORIZER_FAILURE,
    INVALID_CREDENTIAL,
    PROXY_AT_CAPACITY,
    REQUEST_ID_HEADERS,
    RETRY_AFTER_SECONDS,
    UNKNOWN_URL,
    EdgeError,
    missing_credential,
    no_retry_headers,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.types import ASGIApp, Receive, Scope, Send

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
API_ID = "local"
STAGE = "prod"
_INVOKE_RE = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")
LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024  # bytes: a synchronous invocation's request payload
PAYLOAD_TOO_LARGE = f"Request must be smaller than {LAMBDA_PAYLOAD_LIMIT} bytes for the InvokeFunction operation"
ORIGIN_REFUSED = (
    "Requests from a web page (with an Origin header) are refused: Lambda's Invoke API takes SigV4-signed calls only."
)


@dataclass
class AuthResult:
    allowed: bool
    principal_id: str | None
    context: dict[str, Any]


class AuthorizerCache:
    """API Gateway caches the authorizer's policy keyed by the identity-source values alone (nothing
    else of the request) for the TTL; a TTL of 0 caches nothing (the stack's setting:
    quotagate.identity_sources.EDGE_AUTHORIZER)."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[tuple[str, ...], tuple[float, AuthResult]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...]) -> AuthResult | None:
        if self.ttl <= 0:
            return None
        entry = self._entries.get(key)
        if entry and self._clock() - entry[0] < self.ttl:
            return entry[1]
        return None

    def put(self, key: tuple[str, ...], result: AuthResult) -> None:
        if self.ttl > 0:
            with self._lock:
                self._entries[key] = (self._clock(), result)


class FakeLambdaContext:
    def __init__(self, function_name: str, timeout_ms: int = 30_000) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{function_name}"
        self.memory_limit_in_mb = 256
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _headers(scope: Scope) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])]


def build_authorizer_event(scope: Scope, request_id: str) -> dict[str, Any]:
    """A REQUEST authorizer event shaped like the one API Gateway sends. A header sent on several
    lines is, as API Gateway documents for REST events, its last value in ``headers`` and every value,
    in order, in ``multiValueHeaders``."""
    method, path = scope["method"], scope["path"]
    headers: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in _headers(scope):
        headers[name] = value  # API Gateway keeps the client's spelling; the last value wins
        multi.setdefault(name, []).append(value)
    query: dict[str, str] = {}
    multi_query: dict[str, list[str]] = {}
    from urllib.parse import parse_qsl

    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        query[name] = value
        multi_query.setdefault(name, []).append(value)
    client = scope.get("client") or ("127.0.0.1", 0)
    return {
        "type": "REQUEST",
        "methodArn": f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{API_ID}/{STAGE}/{method}{path}",
        "resource": "/v1/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": multi,
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": path.removeprefix("/v1/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/v1/{proxy+}",
            "httpMethod": method,
            "path": f"/{STAGE}{path}",
            "accountId": ACCOUNT_ID,
            "stage": STAGE,
            "requestId": request_id,
            "apiId": API_ID,
            "identity": {"sourceIp": client[0], "userAgent": headers.get("user-agent")},
        },
    }


class LocalApiGateway:
    """ASGI app on one port: ``/v1/*`` through the authorizer to the proxy, ``/health`` straight to
    the proxy (as the stack routes it), and Lambda's Invoke API for the keys function."""

    def __init__(
        self,
        proxy_app: ASGIApp,
        authorizer: Callable[[dict[str, Any], Any], dict[str, Any]],
        keys_handler: Callable[[dict[str, Any], Any], Any],
        identity_sources: list[str],
        cache_seconds: float = 300.0,
        keys_function_names: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
        proxy_concurrency: int = 0,
        credential_headers: list[str] | None = None,
    ) -> None:
        """``identity_sources`` and ``cache_seconds`` are API Gateway's authorizer settings;
        ``credential_headers`` (default: the identity sources) are the headers the stack's UNAUTHORIZED
        response tells a client to use."""
        if cache_seconds > 0 and not identity_sources:
            raise ValueError("API Gateway requires identity sources when the authorizer result is cached")
        self._proxy = proxy_app
        self._authorizer = authorizer
        self._keys_handler = keys_handler
        self._identity_sources = [s.lower() for s in identity_sources]
        self._missing_credential = missing_credential(
            identity_sources if credential_headers is None else credential_headers
        )
        self.cache = AuthorizerCache(cache_seconds, clock)
        self._keys_names = keys_function_names
        # Lambda's concurrency for the proxy (0: unlimited): an invocation beyond it is throttled,
        # which the stack answers as INTEGRATION_FAILURE (edge_errors.PROXY_AT_CAPACITY).
        self._proxy_concurrency = proxy_concurrency
        self._proxy_running = 0
        self._proxy_lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._proxy(scope, receive, send)
            return
        path = scope["path"]
        match = _INVOKE_RE.match(path)
        if match and scope["method"] == "POST":
            await self._invoke(match.group(1), scope, receive, send)
        elif path == "/health":
            request_id = str(uuid.uuid4())
            await self._invoke_proxy(self._forward_scope(scope, {"requestId": request_id}), receive, send, request_id)
        elif path.startswith("/v1/") or path == "/v1":
            await self._authorize_and_forward(scope, receive, send)
        else:
            await _respond_error(send, UNKNOWN_URL, str(uuid.uuid4()))

    async def _authorize_and_forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = str(uuid.uuid4())
        # A repeated identity-source header keys the cache by all its values (how API Gateway keys
        # it is not documented; the stack does not use this cache: EDGE_AUTHORIZER).
        headers: dict[str, list[str]] = {}
        for name, value in _headers(scope):
            headers.setdefault(name.lower(), []).append(value)
        identity = tuple(", ".join(headers.get(source, [])) for source in self._identity_sources)
        if self._identity_sources and not all(identity):
            # API Gateway answers 401 without calling the authorizer when an identity source is missing.
            await _respond_error(send, self._missing_credential, request_id)
            return
        result = self.cache.get(identity)
        if result is None:
            event = build_authorizer_event(scope, request_id)
            try:
                response = await to_thread.run_sync(self._authorizer, event, FakeLambdaContext("authorizer"))
            except Exception as error:
                if str(error) == "Unauthorized":
                    await _respond_error(send, self._missing_credential, request_id)
                else:  # an authorizer crash is API Gateway's AUTHORIZER_FAILURE, and not cached
                    await _respond_error(send, AUTHORIZER_FAILURE, request_id)
                return
            statements = response.get("policyDocument", {}).get("Statement", [])
            allowed = bool(statements) and all(s.get("Effect") == "Allow" for s in statements)
            result = AuthResult(allowed, response.get("principalId"), dict(response.get("context") or {}))
            self.cache.put(identity, result)
        if not result.allowed:  # API Gateway's ACCESS_DENIED, answered as the stack configures it
            await _respond_error(send, INVALID_CREDENTIAL, request_id)
            return
        # Values in the authorizer context reach the integration as strings, plus principalId.
        authorizer = {k: str(v) if not isinstance(v, str) else v for k, v in result.context.items()}
        authorizer["principalId"] = result.principal_id or ""
        await self._invoke_proxy(
            self._forward_scope(scope, {"requestId": request_id, "authorizer": authorizer}), receive, send, request_id
        )

    async def _invoke_proxy(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        """One invocation of the proxy function, for as long as its response streams."""
        with self._proxy_lock:
            throttled = 0 < self._proxy_concurrency <= self._proxy_running
            if not throttled:
                self._proxy_running += 1
        if throttled:
            await _respond_error(send, PROXY_AT_CAPACITY, request_id)
            return
        try:
            await self._proxy(scope, receive, send)
        finally:
            with self._proxy_lock:
                self._proxy_running -= 1

    @staticmethod
    def _forward_scope(scope: Scope, context: dict[str, Any]) -> Scope:
        """What the Lambda Web Adapter does: the AWS-set request context replaces any client copy."""
        context = {"accountId": ACCOUNT_ID, "apiId": API_ID, "stage": STAGE, **context}
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"x-amzn-request-context"]
        headers.append((b"x-amzn-request-context", json.dumps(context).encode()))
        return {**scope, "headers": headers}

    async def _invoke(self, function_name: str, scope: Scope, receive: Receive, send: Send) -> None:
        name = function_name.split(":")[-1]
        if any(header == b"origin" for header, _ in scope["headers"]):
            # A web page's request (a text/plain POST needs no CORS preflight): Lambda's Invoke API
            # takes SigV4-signed calls only, which a page cannot make. Refused before the body is read.
            body = json.dumps({"Type": "User", "message": ORIGIN_REFUSED}).encode()
            await _respond(send, 403, body, extra=[(b"x-amzn-errortype", b"AccessDeniedException")])
            return
        if self._keys_names and name not in self._keys_names:
            body = json.dumps({"Type": "User", "message": f"Function not found: {name}"}).encode()
            await _respond(send, 404, body, extra=[(b"x-amzn-errortype", b"ResourceNotFoundException")])
            return
        raw = bytearray()
        while True:
            message = await receive()
            raw.extend(message.get("body", b""))
            if len(raw) > LAMBDA_PAYLOAD_LIMIT:  # stop reading: Lambda refuses it whole
                body = json.dumps({"Type": "User", "message": PAYLOAD_TOO_LARGE}).encode()
                await _respond(send, 413, body, extra=[(b"x-amzn-errortype", b"RequestEntityTooLargeException")])
                return
            if not message.get("more_body"):
                break
        try:
            payload = json.loads(raw) if raw else {}
        except (ValueError, RecursionError):
            # What Lambda's Invoke API answers for a payload it cannot decode: the function never runs.
            body = json.dumps({"Type": "User", "message": "Could not parse request body into json."}).encode()
            await _respond(send, 400, body, extra=[(b"x-amzn-errortype", b"InvalidRequestContentException")])
            return
        try:
            result = await to_thread.run_sync(self._keys_handler, payload, FakeLambdaContext(name))
            body, extra = json.dumps(result).encode(), []
        except Exception as error:  # what Lambda returns for an unhandled function error
            body = json.dumps({"errorMessage": str(error), "errorType": type(error).__name__}).encode()
            extra = [(b"x-amz-function-error", b"Unhandled")]
        await _respond(send, 200, body, extra=[(b"x-amz-executed-version", b"$LATEST"), *extra])


async def _respond_error(send: Send, error: EdgeError, request_id: str) -> None:
    """As the stack's gateway responses answer: the shared body, the request id in both SDKs' headers,
    ``x-should-retry: false`` on a 401 or 403."""
    extra = [(name.encode(), request_id.encode()) for name in REQUEST_ID_HEADERS]
    if error.retry_after:
        extra.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
    extra += [(name.encode(), value.encode()) for name, value in no_retry_headers(error.status).items()]
    await _respond(send, error.status, json.dumps(error.body()).encode(), extra=extra)


async def _respond(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
