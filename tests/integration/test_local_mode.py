"""Local mode (``make dev``): provider secrets created in moto at startup, and a client that hangs up
in the middle of its request body (a client event: one INFO line, never an unhandled ERROR)."""

from __future__ import annotations

import asyncio
import io
import json

import boto3
import pytest
from moto import mock_aws

from quotagate import config


@pytest.fixture
def shared_secret_config(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "providers": {
                    "openai": {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key_secret": "qg/shared"},
                    "openai-eu": {"type": "openai", "base_url": "http://127.0.0.1:2/v1", "api_key_secret": "qg/shared"},
                    "anthropic": {
                        "type": "anthropic",
                        "base_url": "http://127.0.0.1:3/v1",
                        "api_key_secret": "qg/claude",
                    },
                },
                "models": {"m": {"provider": "openai", "upstream_model": "gpt"}},
                "plans": {"free": {"models": "*"}},
                "default_plan": "free",
            }
        )
    )
    monkeypatch.setenv("QG_CONFIG_FILE", str(path))
    monkeypatch.setenv("QG_SECRET_QG_SHARED", "sk-shared-test-value")
    monkeypatch.setenv("QG_SECRET_QG_CLAUDE", "sk-ant-test-value")
    config.reset_cache()
    yield
    config.reset_cache()


def test_two_providers_sharing_one_secret_start(shared_secret_config):
    from quotagate_tools.local.__main__ import provider_secrets_from_env

    with mock_aws():
        provider_secrets_from_env()
        client = boto3.client("secretsmanager")
        assert client.get_secret_value(SecretId="qg/shared")["SecretString"] == "sk-shared-test-value"
        assert client.get_secret_value(SecretId="qg/claude")["SecretString"] == "sk-ant-test-value"
        # A restart against the same moto state (the secret exists) updates it instead of failing.
        import os

        os.environ["QG_SECRET_QG_SHARED"] = "sk-shared-rotated"
        provider_secrets_from_env()
        assert client.get_secret_value(SecretId="qg/shared")["SecretString"] == "sk-shared-rotated"


class FakeGateway:
    max_body_bytes = 1024 * 1024

    async def chat(self, identity, raw, request_id):  # pragma: no cover - never reached
        raise AssertionError("the body never arrived")


async def serve_one(app, scope, receive, send) -> None:
    """What an ASGI server does around one request: the app's lifespan (its state is copied into
    the request's scope), the request, then shutdown."""
    to_app: asyncio.Queue = asyncio.Queue()
    from_app: asyncio.Queue = asyncio.Queue()
    state: dict = {}
    lifespan = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, to_app.get, from_app.put)
    )
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"
    try:
        await app({**scope, "state": dict(state)}, receive, send)
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await lifespan


def hang_up_mid_body(path: str) -> tuple[list[dict], BaseException | None]:
    from functions.proxy.app import Services, create_app

    app = create_app(lambda: Services(FakeGateway(), lambda headers: None))  # type: ignore[arg-type]
    context = {"authorizer": {"tenant": "t", "consumer": "c", "key_id": "k", "plan": "free"}}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"5000"),
            (b"x-amzn-request-context", json.dumps(context).encode()),
        ],
    }
    messages = [
        {"type": "http.request", "body": b'{"model": "m", "messages": [', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    try:
        asyncio.run(serve_one(app, scope, receive, send))
    except BaseException as error:  # what the ASGI server would log as "Exception in ASGI application"
        return sent, error
    return sent, None


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
def test_a_client_hanging_up_mid_body_is_one_info_line(monkeypatch, path):
    from quotagate.observability import logger

    stream = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", stream)
    level = logger.log_level
    logger.setLevel("INFO")
    try:
        _, raised = hang_up_mid_body(path)
    finally:
        logger.setLevel(level)
    assert raised is None
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    assert [line["level"] for line in lines] == ["INFO"], lines
    assert "disconnect" in lines[0]["message"] and "exception" not in lines[0]
