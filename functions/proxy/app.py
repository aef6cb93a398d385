"""The proxy Lambda's ASGI app (served by uvicorn behind the Lambda Web Adapter). Thin: it turns
HTTP into calls on quotagate.logic.gateway and shapes the responses."""

from __future__ import annotations

import functools
import json
import re
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from quotagate import settings
from quotagate.auth_types import AuthType
from quotagate.errors import GatewayError, invalid_request, not_found
from quotagate.identity import Identity
from quotagate.logic import refusals
from quotagate.logic.chat_request import DEFAULT_MAX_BODY_BYTES, body_too_large
from quotagate.logic.gateway import ChatResponse, Gateway

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from starlette.types import Message, Receive, Scope, Send

    from quotagate.logic.request_types import Limits
    from quotagate.protocols.messages_dialect import MessagesReply
    from quotagate.protocols.openai_responses import ResponsesStream

# The client's Anthropic betas (allow-listed ones reach Anthropic targets; several header lines
# arrive joined by commas).
BETA_HEADER = "anthropic-beta"
# Headers that identify the caller are only ever read from the AWS-set request context.
REQUEST_CONTEXT_HEADER = "x-amzn-request-context"
# On every response: the openai SDK reads it into ``_request_id``; the logs carry the same id.
REQUEST_ID_HEADER = "x-request-id"
# What a request id may look like (API Gateway's are UUIDs); anything else is replaced.
_REQUEST_ID_SHAPE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


class Services:
    """What the app needs, built on first use (cold start stays small; tests inject fakes)."""

    def __init__(self, gateway: Gateway, authenticate: Callable[[dict[str, str]], Identity]) -> None:
        self.gateway = gateway
        self.authenticate = authenticate


def default_services(clock: Callable[[], float] | None = None) -> Services:
    """The real services; ``clock`` (wall seconds) replaces the time of key checks and of the
    key-record cache (tests move it instead of sleeping)."""
    import time

    import httpx

    from quotagate import aws, tables
    from quotagate.config import load_config
    from quotagate.dal.circuit_store import DynamoCircuitStore
    from quotagate.dal.item_table import ItemTable
    from quotagate.dal.key_cache import CachedKeyRecords
    from quotagate.dal.keys_store import DynamoKeyStore
    from quotagate.dal.tenants_store import CachedTenantRecords, DynamoTenantStore
    from quotagate.identity_sources import configured_identity_sources
    from quotagate.jwt_auth import JwtVerifier
    from quotagate.logic.auth import Authenticator
    from quotagate.logic.breaker import CircuitBreaker
    from quotagate.observability import logger, record_breaker_open, record_outcome, record_tenant_breaker_open
    from quotagate.providers.factory import HttpProviderFactory
    from quotagate.quota.ledger import DynamoQuotaLedger
    from quotagate.quota.service import QuotaService
    from quotagate.quota.settlements import SqsSettlementQueue
    from quotagate.upstream_tls import upstream_tls_context

    # One low-level DynamoDB client for the key, tenant and circuit stores (each client or resource
    # built costs a cold start about 10 ms, a resource 60 ms more).
    dynamodb = aws.client("dynamodb")
    store = DynamoKeyStore(ItemTable(dynamodb, tables.KEYS.name()))
    # The CA bundle is loaded on the first https connection, not here (cold start).
    http = httpx.AsyncClient(
        verify=upstream_tls_context(), limits=httpx.Limits(max_connections=200, max_keepalive_connections=50)
    )
    queue_url = settings.env(settings.SETTLEMENT_QUEUE_URL)
    settlement_queue = SqsSettlementQueue(aws.client("sqs", aws.queue_config()), queue_url) if queue_url else None
    gateway = Gateway(
        config=load_config,
        key_records=CachedKeyRecords(store, clock=clock or time.monotonic),
        # Tenant records live in the keys table.
        tenant_records=CachedTenantRecords(DynamoTenantStore(store.table)),
        # One botocore attempt per call: the ledger's idempotent retries carry the time budget.
        # No read inside reserve: the gateway reads remaining quota concurrently with the upstream.
        quota=QuotaService(
            DynamoQuotaLedger(aws.quota_client(), snapshot_after_reserve=False),
            settlement_queue=settlement_queue,
            on_warning=lambda message, **fields: logger.warning(message, extra=fields),
        ),
        providers=HttpProviderFactory(load_config, http),
        # Circuit state is shared by every container through DynamoDB (cached ~2 s per container).
        breaker=CircuitBreaker(
            DynamoCircuitStore(dynamodb),
            lambda: load_config().circuit_breaker,
            on_open=record_breaker_open,
            on_caller_open=record_tenant_breaker_open,
        ),
        keepalive_seconds=settings.keepalive_seconds(),
        max_request_seconds=settings.max_request_seconds(),
        max_body_bytes=int(settings.env(settings.MAX_BODY_BYTES) or DEFAULT_MAX_BODY_BYTES),
        on_finished=record_outcome,
        wall_clock=clock or time.time,
    )
    authenticator = Authenticator(store, JwtVerifier.from_env(), clock=clock or time.time)
    identity_sources = configured_identity_sources()
    # Function-URL path: the same rules as the authorizer (identity sources only, in order); the
    # Authorization header may hold the caller's SigV4 signature, which Lambda has already checked.
    return Services(
        gateway, lambda headers: authenticator.authenticate_headers(headers, identity_sources, aws_signed=True)
    )


def error_response(
    error: GatewayError, extra_headers: dict[str, str] | None = None, protocol_path: str = ""
) -> JSONResponse:
    """The error in the shape of the protocol the request path speaks (OpenAI's unless Anthropic's)."""
    body = error.body()
    if protocol_path.startswith("/v1/messages"):
        from quotagate.protocols.anthropic_messages import error_body, is_messages_path

        body = error_body(error) if is_messages_path(protocol_path) else body
    return JSONResponse(body, status_code=error.status, headers={**(extra_headers or {}), **error.headers})


def request_context(request: Request) -> dict[str, Any]:
    raw = request.headers.get(REQUEST_CONTEXT_HEADER)
    if not raw:
        return {}
    try:
        context = json.loads(raw)
    except ValueError:
        return {}
    return context if isinstance(context, dict) else {}


def request_id_of(request: Request) -> str:
    """The id :class:`RequestIdMiddleware` gave this request."""
    return str(request.scope["state"]["request_id"])


class RequestIdMiddleware:
    """Gives every request one id — API Gateway's ``requestId`` when there is one, else a new
    UUID — and puts it in ``x-request-id`` on every response, errors and 500s included (it wraps
    the whole app, outside Starlette's own error middleware)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _aws_request_id(scope) or str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != header[0]]
                message = {**message, "headers": [*headers, header]}
                log_dropped(headers, request_id, scope.get("path", ""))
            await send(message)

        await self.app(scope, receive, send_with_id)


# The response headers that name what the gateway removed from a request (quotagate.wire).
DROPPED_HEADERS = (b"x-quotagate-dropped-params", b"x-quotagate-dropped-betas")


def log_dropped(headers: list[tuple[bytes, bytes]], request_id: str, path: str) -> None:
    """Log the request fields and betas the gateway dropped (the client is told in the headers):
    an operator sees which clients send what, and which declarations a new client needs."""
    dropped = {name.decode(): value.decode() for name, value in headers if name.lower() in DROPPED_HEADERS}
    if dropped:
        from quotagate.observability import logger

        logger.info("request fields dropped", extra={"request_id": request_id, "path": path, **dropped})


def _aws_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == REQUEST_CONTEXT_HEADER.encode():
            try:
                context = json.loads(value)
            except ValueError:
                return None
            request_id = context.get("requestId") if isinstance(context, dict) else None
            return request_id if isinstance(request_id, str) and _REQUEST_ID_SHAPE.match(request_id) else None
    return None


class SettlingStreamingResponse(StreamingResponse):
    """Streams the answer and settles the quota on every path: normal end, upstream failure, client
    disconnect (the body iterator is cancelled), or never starting at all.

    On a normal end the settlement runs *before* the response is completed: under the Lambda Web
    Adapter the invocation ends with the response, and work left after it would be frozen with the
    execution environment (and lost if the environment is recycled)."""

    def __init__(self, chat: ChatResponse | ResponsesStream | MessagesReply) -> None:
        super().__init__(
            chat.body(),
            media_type="text/event-stream",
            headers={**chat.headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self._chat = chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def settle_before_the_end(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await self._chat.finish(200)
            await send(message)

        try:
            await super().__call__(scope, receive, settle_before_the_end)
        finally:
            await self._chat.finish(200)  # a no-op when already settled


# ---------------------------------------------------------------------------------------------
# Services, in Starlette's lifespan state
# ---------------------------------------------------------------------------------------------


class LazyServices:
    """The services of one app, built on first use: the proxy's init (and /health, the Lambda Web
    Adapter's readiness check) stays small; the first real request builds them."""

    def __init__(self, factory: Callable[[], Services]) -> None:
        self._factory = factory
        self._services: Services | None = None

    def get(self) -> Services:
        if self._services is None:
            self._services = self._factory()
        return self._services


@asynccontextmanager
async def services_lifespan(factory: Callable[[], Services], app: Starlette) -> AsyncIterator[dict[str, Any]]:
    """The app's lifespan: its state (copied into every request's ``request.state``) holds the services."""
    yield {"services": LazyServices(factory)}


def services_of(request: Request) -> Services:
    lazy: LazyServices | None = getattr(request.state, "services", None)
    if lazy is None:  # a server that runs no lifespan (uvicorn --lifespan off): a deployment bug
        raise RuntimeError("The proxy app's lifespan did not run: serve it with lifespan events on.")
    return lazy.get()


def gateway_of(request: Request) -> Gateway:
    return services_of(request).gateway


# ---------------------------------------------------------------------------------------------
# Request helpers
# ---------------------------------------------------------------------------------------------


async def identify(request: Request) -> Identity:
    """The caller; once known, a refusal of its request counts in its request windows (on_gateway_error)."""
    refusals.start_request()
    identity = await authenticated_caller(request)
    request.state.identity = identity
    return identity


async def authenticated_caller(request: Request) -> Identity:
    context = request_context(request)
    identity = Identity.from_context(context.get("authorizer"))
    if identity is not None and (identity.auth_type != AuthType.API_KEY or identity.secret_fingerprint):
        return identity
    # Function URL path: no authorizer ran, so validate the credential with the same core code.
    # The same for an Allow cached by an authorizer that predates secret fingerprints: without
    # one, a rotation could not revoke the secret it was given for.
    from anyio import to_thread

    from quotagate.logic.exceptions import AccessDenied, AuthUnavailable, MissingCredential

    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        return await to_thread.run_sync(services_of(request).authenticate, headers)
    except (MissingCredential, AccessDenied, AuthUnavailable) as error:
        raise error.gateway_error() from None


def count_request(request: Request, identity: Identity) -> None:
    """Count the caller's request in its request windows (a background task: after the answer)."""
    try:
        gateway = gateway_of(request)
    except Exception:  # services that never built: nothing to count in
        return
    refusals.count_request(gateway, identity)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise body_too_large(limit)
    return bytes(body)


async def admitted_request(request: Request, max_body_bytes: int | None = None) -> tuple[Gateway, Identity, bytes, str]:
    """What every model endpoint starts with: the caller, the gateway, the body (bounded: by the
    endpoint's own ``max_body_bytes`` when smaller), the id."""
    identity = await identify(request)
    gateway = gateway_of(request)
    raw = await read_body(request, min(gateway.max_body_bytes, max_body_bytes or gateway.max_body_bytes))
    return gateway, identity, raw, request_id_of(request)


async def limits_of(request: Request) -> tuple[Gateway, Limits]:
    from anyio import to_thread

    identity = await identify(request)
    gateway = gateway_of(request)
    return gateway, await to_thread.run_sync(gateway.limits_for, identity)


# ---------------------------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def list_models(request: Request) -> Response:
    # The names and aliases this key's plan (and the key's allowed_models) may call.
    gateway, limits = await limits_of(request)
    return JSONResponse({"object": "list", "data": gateway.model_listing(limits)})


async def retrieve_model(request: Request) -> Response:
    gateway, limits = await limits_of(request)
    return JSONResponse(gateway.model_card(request.path_params["model"], limits))


async def chat_completions(request: Request) -> Response:
    gateway, identity, raw, request_id = await admitted_request(request)
    chat = await gateway.chat(identity, raw, request_id)
    if chat.request.stream:
        return SettlingStreamingResponse(chat)
    try:
        return JSONResponse(chat.json, headers=chat.headers)
    finally:
        await chat.finish(200)


async def responses(request: Request) -> Response:
    # Loaded on first use, like the Messages endpoint: a chat-only container never pays for it.
    from quotagate.protocols.openai_responses import create_response

    gateway, identity, raw, request_id = await admitted_request(request)
    result = await create_response(gateway, identity, raw, request_id)
    if result.stream is not None:
        return SettlingStreamingResponse(result.stream)
    return JSONResponse(result.json, headers=result.headers)


async def embeddings(request: Request) -> Response:
    gateway, identity, raw, request_id = await admitted_request(request)
    body, headers = await gateway.embeddings(identity, raw, request_id)
    return JSONResponse(body, headers=headers)


async def messages(request: Request) -> Response:
    from quotagate.protocols import messages_dialect

    gateway, identity, raw, request_id = await admitted_request(request)
    reply = await messages_dialect.create_message(
        gateway, identity, raw, request_id, ",".join(request.headers.getlist(BETA_HEADER))
    )
    if reply.request.stream:
        return SettlingStreamingResponse(reply)
    try:
        return JSONResponse(await reply.message(), headers=reply.headers)
    finally:
        await reply.finish(200)


async def count_message_tokens(request: Request) -> Response:
    from quotagate.protocols import anthropic_messages

    gateway, identity, raw, _ = await admitted_request(request, anthropic_messages.COUNT_TOKENS_MAX_BODY_BYTES)
    count, headers = await anthropic_messages.count_tokens(gateway, identity, raw)
    # No reservation, but a request all the same: it counts in the caller's request windows.
    return JSONResponse(count, headers=headers, background=BackgroundTask(count_request, request, identity))


async def unknown_route(request: Request) -> Response:
    raise not_found(f"Unknown request URL: {request.method} {request.url.path}.", "unknown_url")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


async def on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    from quotagate.observability import record_rejection

    record_rejection(exc, request_id_of(request))  # skipped if the request already has an outcome
    response = error_response(exc, protocol_path=request.url.path)
    identity: Identity | None = getattr(request.state, "identity", None)
    if identity is not None and refusals.counts_refusal(exc.status):
        # After the answer is sent (the client does not wait for it), best effort.
        response.background = BackgroundTask(count_request, request, identity)
    return response


async def on_unexpected(request: Request, exc: Exception) -> Response:
    from quotagate.observability import logger

    logger.exception("unhandled error")
    return error_response(
        GatewayError(500, "The gateway had an internal error.", "api_error", "internal_error"),
        protocol_path=request.url.path,
    )


async def on_client_disconnect(request: Request, exc: Exception) -> Response:
    # The client hung up before its body was complete: a client event, not a gateway error.
    # Nothing was reserved yet; the answer below goes nowhere.
    from quotagate.observability import logger

    logger.info(
        "client disconnected before sending its whole request body",
        extra={"path": request.url.path, "request_id": request_id_of(request)},
    )
    return error_response(
        invalid_request("The client disconnected before sending the whole request body.", code="client_disconnected")
    )


async def on_http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    if status == 405:
        return error_response(
            GatewayError(
                405,
                f"Method {request.method} not allowed on {request.url.path}.",
                "invalid_request_error",
                "method_not_allowed",
            ),
            protocol_path=request.url.path,
        )
    return error_response(
        not_found(f"Unknown request URL: {request.method} {request.url.path}.", "unknown_url"),
        protocol_path=request.url.path,
    )


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/responses", responses, methods=["POST"]),
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_message_tokens, methods=["POST"]),
    Route("/{path:path}", unknown_route, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
]

EXCEPTION_HANDLERS: dict[Any, Any] = {
    GatewayError: on_gateway_error,
    HTTPException: on_http_error,
    ClientDisconnect: on_client_disconnect,
    Exception: on_unexpected,
}


def create_app(services_factory: Callable[[], Services] = default_services) -> RequestIdMiddleware:
    """The proxy app; ``services_factory`` builds its services (tests inject fakes)."""
    return RequestIdMiddleware(
        Starlette(
            routes=ROUTES,
            exception_handlers=EXCEPTION_HANDLERS,
            lifespan=functools.partial(services_lifespan, services_factory),
        )
    )


app = create_app()
