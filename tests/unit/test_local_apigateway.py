"""The local API Gateway emulator behaves like API Gateway's REQUEST authorizer front door: a cache
keyed by the identity-source values alone, a 401 without calling the authorizer when an identity
source is missing, a TTL, and the authorizer's Deny answered as the stack's ACCESS_DENIED (401)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from quotagate.edge_errors import INVALID_CREDENTIAL
from quotagate_tools.local.apigateway import LocalApiGateway
from tests.helpers import FakeClock

if TYPE_CHECKING:
    from starlette.requests import Request


class CountingAuthorizer:
    """Allows 'Bearer good', denies 'Bearer bad', raises Unauthorized otherwise; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.calls += 1
        value = {k.lower(): v for k, v in event["headers"].items()}.get("authorization")
        if value not in ("Bearer good", "Bearer bad"):
            raise Exception("Unauthorized")
        effect = "Allow" if value == "Bearer good" else "Deny"
        return {
            "principalId": "p",
            "context": {"who": f"call-{self.calls}"},
            "policyDocument": {"Statement": [{"Effect": effect, "Action": "execute-api:Invoke", "Resource": "*"}]},
        }


async def echo_authorizer_context(request: Request) -> JSONResponse:
    context = json.loads(request.headers["x-amzn-request-context"])
    return JSONResponse(context.get("authorizer", {}))


def run(gateway: LocalApiGateway, headers: dict[str, str]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://local") as client:
            return await client.get("/v1/models", headers=headers)

    return asyncio.run(go())


@pytest.fixture
def edge() -> tuple[LocalApiGateway, CountingAuthorizer, FakeClock]:
    authorizer, clock = CountingAuthorizer(), FakeClock(1000.0)
    proxy = Starlette(routes=[Route("/v1/models", echo_authorizer_context)])
    return LocalApiGateway(proxy, authorizer, lambda e, c: {}, ["Authorization"], 300, clock=clock), authorizer, clock


def test_missing_identity_source_is_401_without_calling_the_authorizer(edge):
    gateway, authorizer, _ = edge
    response = run(gateway, {"x-api-key": "anything"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer <key>" in response.json()["error"]["message"]
    assert authorizer.calls == 0


def test_the_cache_is_keyed_by_identity_source_values_only(edge):
    gateway, authorizer, clock = edge
    first = run(gateway, {"Authorization": "Bearer good", "x-api-key": "one"})
    second = run(gateway, {"Authorization": "Bearer good", "x-api-key": "two"})
    assert first.json()["who"] == second.json()["who"] == "call-1"  # the other header does not matter
    assert authorizer.calls == 1
    clock.now += 299
    assert run(gateway, {"Authorization": "Bearer good"}).json()["who"] == "call-1"
    clock.now += 1  # the TTL is over: API Gateway asks the authorizer again
    assert run(gateway, {"Authorization": "Bearer good"}).json()["who"] == "call-2"


def test_deny_is_the_stacks_access_denied_response(edge):
    gateway, authorizer, _ = edge
    for _ in range(2):
        response = run(gateway, {"Authorization": "Bearer bad"})
        assert response.status_code == INVALID_CREDENTIAL.status == 401
        assert response.json() == INVALID_CREDENTIAL.body()
    assert authorizer.calls == 1  # the Deny is cached too


def test_unauthorized_is_401_and_a_ttl_of_zero_caches_nothing():
    authorizer = CountingAuthorizer()
    proxy = Starlette(routes=[Route("/v1/models", echo_authorizer_context)])
    gateway = LocalApiGateway(proxy, authorizer, lambda e, c: {}, ["Authorization"], 0)
    assert run(gateway, {"Authorization": "Basic eHl6"}).status_code == 401
    run(gateway, {"Authorization": "Bearer good"})
    run(gateway, {"Authorization": "Bearer good"})
    assert authorizer.calls == 3


@pytest.mark.parametrize(
    "headers",
    [{"x-api-key": "anything"}, {"Authorization": "Basic eHl6"}, {"Authorization": "Bearer bad"}],
    ids=["missing identity source", "unauthorized", "denied"],
)
def test_edge_401s_carry_a_request_id(edge, headers):
    # The openai SDK fills AuthenticationError.request_id from x-request-id; API Gateway's gateway
    # responses carry $context.requestId there (the stack maps it), and so does the emulator.
    gateway, _, _ = edge
    first, second = run(gateway, headers), run(gateway, headers)
    assert first.status_code == second.status_code == 401
    assert first.headers["x-request-id"] and second.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_a_throttled_proxy_is_the_stacks_503_with_retry_after():
    """Beyond the proxy's concurrency, as API Gateway answers a throttled Lambda with the stack's
    INTEGRATION_FAILURE response: 503, the edge body both SDKs read, Retry-After; nothing reaches the app."""
    from quotagate.edge_errors import PROXY_AT_CAPACITY, RETRY_AFTER_SECONDS

    release = asyncio.Event()
    started = asyncio.Event()
    calls = 0

    async def slow_stream(request: Request) -> JSONResponse:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return JSONResponse({"ok": True})

    proxy = Starlette(routes=[Route("/v1/models", slow_stream)])
    gateway = LocalApiGateway(proxy, CountingAuthorizer(), lambda e, c: {}, ["Authorization"], 300, proxy_concurrency=1)

    async def go() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://local") as client:
            headers = {"Authorization": "Bearer good"}
            first = asyncio.create_task(client.get("/v1/models", headers=headers))
            await started.wait()
            second = await client.get("/v1/models", headers=headers)
            release.set()
            done = await first  # its invocation ends with its response: the slot is free again
            third = await client.get("/v1/models", headers=headers)
            return done, second, third

    first, second, third = asyncio.run(go())
    assert first.status_code == 200 and third.status_code == 200
    assert second.status_code == 503
    assert second.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert second.json() == PROXY_AT_CAPACITY.body()
    assert second.json()["error"]["code"] == "service_unavailable"
    assert second.headers["x-request-id"]
    assert calls == 2


@pytest.mark.parametrize(
    "headers",
    [{"x-api-key": "anything"}, {"Authorization": "Basic eHl6"}, {"Authorization": "Bearer bad"}],
    ids=["missing identity source", "unauthorized", "denied"],
)
def test_edge_401s_tell_the_sdks_not_to_retry(edge, headers):
    gateway, _, _ = edge
    response = run(gateway, headers)
    assert response.status_code == 401
    assert response.headers["x-should-retry"] == "false"


def run_lines(gateway: LocalApiGateway, lines: list[tuple[str, str]]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://local") as client:
            return await client.get("/v1/models", headers=lines)

    return asyncio.run(go())


def test_a_repeated_identity_source_is_never_served_the_cached_answer_of_one_value(edge):
    """Issue 18 item 4: 'Bearer C' cached, then 'Bearer A' + 'Bearer C' on two lines got C's cached
    Allow without the authorizer (which sees both values) being asked."""
    gateway, authorizer, _ = edge
    assert run(gateway, {"Authorization": "Bearer good"}).status_code == 200
    calls = authorizer.calls
    for lines in (
        [("Authorization", "Bearer other"), ("Authorization", "Bearer good")],
        [("Authorization", "Bearer good"), ("Authorization", "Bearer other")],
    ):
        run_lines(gateway, lines)
    assert authorizer.calls == calls + 2


def test_the_authorizer_event_has_the_last_value_in_headers_and_all_in_multi_value_headers():
    from quotagate_tools.local.apigateway import build_authorizer_event

    scope = {
        "method": "GET",
        "path": "/v1/models",
        "headers": [(b"authorization", b"Bearer A"), (b"authorization", b"Bearer C")],
        "query_string": b"",
    }
    event = build_authorizer_event(scope, "r")
    assert event["headers"]["authorization"] == "Bearer C"
    assert event["multiValueHeaders"]["authorization"] == ["Bearer A", "Bearer C"]


def test_the_stack_setting_calls_the_authorizer_every_time_and_names_both_headers():
    from quotagate.identity_sources import DEFAULT_IDENTITY_SOURCES, EDGE_AUTHORIZER

    authorizer = CountingAuthorizer()
    proxy = Starlette(routes=[Route("/v1/models", echo_authorizer_context)])
    gateway = LocalApiGateway(
        proxy,
        authorizer,
        lambda e, c: {},
        list(EDGE_AUTHORIZER.identity_sources),
        EDGE_AUTHORIZER.result_cache_seconds,
        credential_headers=list(DEFAULT_IDENTITY_SOURCES),
    )
    run(gateway, {"Authorization": "Bearer good"})
    run(gateway, {"Authorization": "Bearer good"})
    missing = run(gateway, {})
    assert authorizer.calls == 3  # no identity source: API Gateway calls the authorizer, which refuses
    assert missing.status_code == 401
    assert "'Authorization: Bearer <key>' or in the 'x-api-key' header" in missing.json()["error"]["message"]
    with pytest.raises(ValueError, match="identity sources"):
        LocalApiGateway(proxy, authorizer, lambda e, c: {}, [], 300)
