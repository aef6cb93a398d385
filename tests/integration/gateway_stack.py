"""The whole gateway on loopback for integration tests: single-threaded moto server, the mock
model server, and the local API Gateway emulator in front of the real authorizer and proxy app."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3

from quotagate import aws, config, key_derivation, tables
from quotagate.identity_sources import DEFAULT_IDENTITY_SOURCES

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.helpers import FakeClock


def mock_providers(read_timeout: float = 5) -> dict[str, dict[str, object]]:
    """One provider of each type (OpenAI-compatible, Anthropic, Bedrock), all served by the mock."""
    timeouts = {"connect_timeout": 2, "read_timeout": read_timeout}
    return {
        "openai": {"type": "openai", "base_url": "${QG_MOCK_BASE_URL}/v1", **timeouts},
        "anthropic": {"type": "anthropic", "base_url": "${QG_MOCK_BASE_URL}/v1", **timeouts},
        "bedrock": {"type": "bedrock", "base_url": "${QG_MOCK_BASE_URL}", "region": "us-east-1", **timeouts},
    }


TEST_CONFIG = {
    "default_plan": "free",
    "providers": {
        "mock": {"type": "openai", "base_url": "${QG_MOCK_BASE_URL}/v1", "connect_timeout": 2, "read_timeout": 5}
    },
    "models": {
        "mock-gpt": {
            "provider": "mock",
            "upstream_model": "mock-gpt",
            "price": {"input_per_million": 1.0, "output_per_million": 2.0},
        },
        "mock-omit": {
            "provider": "mock",
            "upstream_model": "mock-gpt@omit_usage=1",
            "price": {"input_per_million": 1.0, "output_per_million": 2.0},
        },
        "mock-drop": {
            "provider": "mock",
            "upstream_model": "mock-gpt@drop_after=3",
            "price": {"input_per_million": 1.0, "output_per_million": 2.0},
        },
        "mock-500": {
            "provider": "mock",
            "upstream_model": "mock-gpt@status=500",
            "price": {"input_per_million": 1.0, "output_per_million": 2.0},
        },
        "mock-secret": {"provider": "mock", "upstream_model": "mock-gpt"},
    },
    "plans": {
        "free": {
            "limits": {"requests_per_minute": 1000, "tokens_per_minute": 100000},
            "models": ["mock-gpt", "mock-omit", "mock-drop", "mock-500"],
            "default_max_tokens": 64,
        },
        "pro": {"limits": {}, "models": "*", "default_max_tokens": 64},
    },
}


@dataclass
class GatewayStack:
    base_url: str
    moto_url: str
    mock: Any  # quotagate_tools.mock.MockServer
    gateway: Any  # quotagate_tools.local.apigateway.LocalApiGateway (its ``cache`` is API Gateway's)
    clock: Any = None
    _usage: Any = None

    def cold_caches(self) -> None:
        """Forget every cached authorization: API Gateway's (emulated) and the authorizer's own."""
        import functions.authorizer.handler as authorizer
        from quotagate_tools.local.apigateway import AuthorizerCache

        self.gateway.cache = AuthorizerCache(self.gateway.cache.ttl)
        authorizer.reset(clock=self.clock or time.time)

    def usage_pipeline(self) -> Any:
        """The local usage pipeline (stream → pipe emulation → bus → queue → real rollup handler),
        set up on first use; call ``.drain()`` to run it until nothing moves."""
        if self._usage is None:
            from functions.usage_rollup.handler import lambda_handler as rollup
            from quotagate_tools.local.usage_pipeline import LocalUsagePipeline

            self._usage = LocalUsagePipeline.from_boto(rollup)
            self._usage.setup()
        return self._usage

    def invoke_keys(self, payload: dict[str, Any]) -> dict[str, Any]:
        from functions.keys.handler import lambda_handler
        from quotagate_tools.local.apigateway import FakeLambdaContext

        return lambda_handler(payload, FakeLambdaContext("keys"))

    def create_key(self, tenant: str, consumer: str = "c", plan: str = "free", **fields: Any) -> dict[str, Any]:
        response = self.invoke_keys(
            {"action": "create_key", "tenant": tenant, "consumer": consumer, "plan": plan, **fields}
        )
        assert response["ok"], response
        return response["result"]

    def wait_settled(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The settled reservation of a request. A stream is settled after its last byte has been
        sent, so a client can read the counters a moment before the settlement lands."""
        from tests.quota_table import QuotaTable

        table = QuotaTable(boto3.client("dynamodb"))
        deadline = time.monotonic() + timeout
        while True:
            item = table.get_reservation(request_id)
            if item and item.get("status") == "settled":
                return item
            if time.monotonic() > deadline:
                raise AssertionError(f"request {request_id} not settled: {item}")
            time.sleep(0.02)

    def quota_used(self, scope_pk: str, limit_name: str) -> int:
        from tests.quota_table import QuotaTable

        return QuotaTable(boto3.client("dynamodb")).usage_of(scope_pk, limit_name)


def _reset_handler_singletons() -> None:
    import functions.authorizer.handler as authorizer
    import functions.keys.handler as keys
    import functions.usage_rollup.handler as usage_rollup

    for module in (authorizer, keys, usage_rollup):
        reset = getattr(module, "reset", None)
        if callable(reset):
            reset()
    # The cached Powertools providers hold a boto3 client bound to the stack's moto server: one made
    # here would read from a dead endpoint after the stack stops.
    aws.secrets_provider.cache_clear()
    aws.ssm_provider.cache_clear()


@contextmanager
def gateway_stack(
    tmp_dir: Path,
    config_overrides: dict[str, Any] | None = None,
    token_delay: float = 0.01,
    keepalive_seconds: float = 15.0,
    authorizer_cache_seconds: float = 0.0,
    max_request_seconds: float | None = None,
    identity_sources: tuple[str, ...] = DEFAULT_IDENTITY_SOURCES,
    clock: FakeClock | None = None,
) -> Iterator[GatewayStack]:
    """``identity_sources`` are the credential headers and ``authorizer_cache_seconds`` how long the
    authorizer keeps an answer per credential, as the stack deploys them (API Gateway itself caches
    nothing: EDGE_AUTHORIZER). ``clock`` (wall seconds) drives the authorizer's cache and key checks
    and the proxy's key-record cache, so lifetimes can be tested without sleeping."""
    import functions.authorizer.handler as authorizer_module
    from functions.authorizer.handler import lambda_handler as authorizer
    from functions.keys.handler import lambda_handler as keys_handler
    from functions.proxy.app import create_app, default_services
    from quotagate.identity_sources import (
        EDGE_AUTHORIZER,
        authorizer_cache_environment,
        identity_source_environment,
    )
    from quotagate_tools.local.apigateway import LocalApiGateway
    from quotagate_tools.local.motoserver import start_moto_server
    from quotagate_tools.mock import MockServer, MockSettings, run_in_thread

    saved = dict(os.environ)
    moto_url, stop_moto = start_moto_server()
    mock = MockServer(MockSettings(token_delay=token_delay)).start()
    config_file = tmp_dir / "gateway-config.json"
    config_file.write_text(json.dumps({**TEST_CONFIG, **(config_overrides or {})}))
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": moto_url,
            "QG_MOCK_BASE_URL": mock.base_url.rstrip("/"),
            "QG_CONFIG_FILE": str(config_file),
            "QG_KEEPALIVE_SECONDS": str(keepalive_seconds),
            # moto answers one request at a time (see settings.QUOTA_TIME_SCALE).
            "QG_QUOTA_TIME_SCALE": "10",
            # Tests drive the mock's timing and reply length through the gateway.
            "QG_FORWARD_MOCK_CONTROLS": "1",
        }
    )
    if max_request_seconds is not None:
        os.environ["QG_MAX_REQUEST_SECONDS"] = str(max_request_seconds)
    config.reset_cache()
    _reset_handler_singletons()
    stop_gateway = None
    try:
        tables.create_all(boto3.client("dynamodb"))
        key_derivation.create_local_secret(boto3.client("secretsmanager"))
        # What the stack does with the context value: the authorizer (and the function-URL path of
        # the proxy) learn the identity sources API Gateway is configured with from this variable.
        os.environ.update(identity_source_environment(identity_sources))
        os.environ.update(authorizer_cache_environment(authorizer_cache_seconds))
        authorizer_module.reset(clock=clock or time.time)
        app = LocalApiGateway(
            create_app(lambda: default_services(clock=clock)),
            authorizer,
            keys_handler,
            list(EDGE_AUTHORIZER.identity_sources),
            EDGE_AUTHORIZER.result_cache_seconds,
            ("quotagate-keys",),
            clock=clock or time.monotonic,
            credential_headers=list(identity_sources),
        )
        base_url, stop_gateway = run_in_thread(app=app)
        yield GatewayStack(base_url, moto_url, mock, app, clock)
    finally:
        if stop_gateway:
            stop_gateway()
        mock.stop()
        stop_moto()
        os.environ.clear()
        os.environ.update(saved)
        config.reset_cache()
        _reset_handler_singletons()
