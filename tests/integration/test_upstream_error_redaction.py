"""An upstream's error text never reaches a client. A provider that answers 401 "Incorrect API key
provided: sk-proj-***...abcd" (the operator's key prefix and last four characters) must give the
client a gateway error that names the provider and the status — plus the provider's error code
when it is a short identifier, so a client still learns *why* a 400 failed — while the free text
goes to the log only, with anything key-like redacted."""

from __future__ import annotations

import io
import json

import boto3
import httpx
import pytest

from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack

pytestmark = pytest.mark.timeout(120)

LEAKED_KEY = "sk-proj-Zx81abQ9vT3kLmN0pQrStUvWxYz1234abcd"
ANTHROPIC_KEY = "sk-ant-api03-Qw3rTy8uIoP1aSdFgHjKlZxCvBnM0987abcd"
GATEWAY_KEY = "qg_3f2a9c1d7e6b_5Yb8Kq2Lm9Np4Rs7Tv1Wx3Zc6Ad8Fg0Hj"
OPAQUE_TOKEN = "dGhpcyBpcyBhIHNlY3JldCB0b2tlbiB0aGF0IGxlYWtz"
# A self-hosted server's key: no digit, no sk- prefix, nothing a pattern could guess (issue 18).
LETTERS_KEY = "vllm-secret-token-onlyletters-abcdefgh"
LETTERS_KEY_SECRET = "quotagate/providers/vllm"
SECRETS = (LEAKED_KEY, ANTHROPIC_KEY, GATEWAY_KEY, OPAQUE_TOKEN, LETTERS_KEY)

# What the upstream answers, by the requested upstream model.
FAULTS = {
    "leak-401": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        f"Incorrect API key provided: {LEAKED_KEY[:8]}***...{LEAKED_KEY[-4:]}. Full key {LEAKED_KEY}.",
    ),
    "leak-400": (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        f"This model's maximum context length is 8192 tokens (your key {GATEWAY_KEY}, session {OPAQUE_TOKEN}).",
    ),
    "leak-429": (
        429,
        "requests",
        "rate_limit_exceeded",
        f"Rate limit reached for organization org-abc on key {ANTHROPIC_KEY}.",
    ),
    "leak-weird-code": (
        400,
        "invalid_request_error",
        f"bad key {LEAKED_KEY} here",
        "Key sk-live-1234567890abcdef1234.",
    ),
    # A code that looks like an identifier but is the provider's own (here: a mangled key).
    "leak-odd-code": (400, "invalid_request_error", "skprojAbdEfGhIjKl", "Bad request."),
    # Quotes the key the gateway sent, whatever its shape ({key} is filled in by the upstream).
    "echo-key-401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided: {key}."),
}


class LeakyUpstream:
    """An OpenAI-compatible and Anthropic-compatible upstream whose errors quote secrets."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        model = json.loads(raw).get("model", "")
        status, error_type, code, text = FAULTS[model]
        headers = dict(scope["headers"])
        sent_key = (headers.get(b"x-api-key") or headers.get(b"authorization", b"")).decode().removeprefix("Bearer ")
        text = text.replace("{key}", sent_key)
        if scope["path"].endswith("/messages"):  # Anthropic's error shape
            body = {"type": "error", "error": {"type": error_type, "message": text}}
        else:
            body = {"error": {"message": text, "type": error_type, "param": None, "code": code}}
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", b"100")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from quotagate_tools.mock import MockServer

    leaky = MockServer(app=LeakyUpstream()).start()  # type: ignore[arg-type]
    models = {
        f"{kind}-{fault}": {"provider": f"leaky-{kind}", "upstream_model": fault}
        for kind in ("openai", "anthropic", "vllm")
        for fault in FAULTS
    }
    overrides = {
        "providers": {
            **TEST_CONFIG["providers"],
            "leaky-openai": {"type": "openai", "base_url": f"{leaky.base_url}/v1", "read_timeout": 5},
            "leaky-anthropic": {"type": "anthropic", "base_url": f"{leaky.base_url}/v1", "read_timeout": 5},
            "leaky-vllm": {
                "type": "openai",
                "base_url": f"{leaky.base_url}/v1",
                "read_timeout": 5,
                "api_key_secret": LETTERS_KEY_SECRET,
            },
        },
        "models": {**TEST_CONFIG["models"], **models},
        "circuit_breaker": {"failure_threshold": 1000, "cooldown_seconds": 1},
    }
    try:
        with gateway_stack(tmp_path_factory.mktemp("leaky"), overrides, token_delay=0.001) as running:
            boto3.client("secretsmanager").create_secret(Name=LETTERS_KEY_SECRET, SecretString=LETTERS_KEY)
            yield running
    finally:
        leaky.stop()


@pytest.fixture(scope="module")
def key(stack):
    return stack.create_key(tenant="leaky", plan="pro")["api_key"]


@pytest.fixture
def proxy_log(monkeypatch):
    from quotagate.observability import logger

    stream = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", stream)
    return stream


def ask(stack, key, model, stream=False, path="chat/completions"):
    body = (
        {"model": model, "input": "hi"}
        if path == "embeddings"
        else {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": stream}
    )
    return httpx.post(f"{stack.base_url}/v1/{path}", json=body, timeout=30, headers={"authorization": f"Bearer {key}"})


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
        assert secret[-12:] not in text
    assert "sk-" not in text and "qg_" not in text


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "fault, status, code",
    [
        ("leak-401", 502, "invalid_api_key"),
        ("leak-400", 400, "context_length_exceeded"),
        ("leak-429", 429, "rate_limit_exceeded"),
        ("leak-weird-code", 400, None),
        ("leak-odd-code", 400, None),
    ],
)
def test_the_client_gets_provider_and_status_never_the_upstream_text(
    stack, key, proxy_log, kind, stream, fault, status, code
):
    response = ask(stack, key, f"{kind}-{fault}", stream=stream)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    upstream_status = FAULTS[fault][0]
    assert f"'leaky-{kind}'" in error["message"] and f"HTTP {upstream_status}" in error["message"]
    assert_no_secret(response.text)
    upstream_text = FAULTS[fault][3]
    assert upstream_text[:20] not in response.text  # none of the free text
    if kind == "openai" and code is not None:
        assert code in error["message"]  # a short identifier: the client learns why
    if kind == "anthropic":
        assert FAULTS[fault][1] in error["message"]  # Anthropic's error type
    # The detail is in the log, redacted.
    logged = proxy_log.getvalue()
    assert_no_secret(logged)
    assert upstream_text.split(" ")[0] in logged


def test_embeddings_errors_are_redacted_too(stack, key, proxy_log):
    response = ask(stack, key, "openai-leak-401", path="embeddings")
    assert response.status_code == 502
    assert "HTTP 401" in response.json()["error"]["message"]
    assert_no_secret(response.text)
    assert "Incorrect API key" not in response.text
    assert_no_secret(proxy_log.getvalue())


@pytest.mark.parametrize("stream", [False, True])
def test_a_key_of_any_shape_is_in_no_log_line(stack, key, proxy_log, stream):
    """The upstream's 401 quotes the key the gateway sent; the key has no digit and no known prefix,
    so only its value can give it away: neither the response nor any log line contains it."""
    response = ask(stack, key, "vllm-echo-key-401", stream=stream)
    assert response.status_code == 502, response.text
    assert "HTTP 401 (invalid_api_key)" in response.json()["error"]["message"]
    logged = proxy_log.getvalue()
    assert "Incorrect API key provided: [redacted]" in logged, "the detail is logged, redacted"
    assert LETTERS_KEY not in logged and LETTERS_KEY not in response.text
    assert_no_secret(logged)


def test_an_unknown_upstream_code_stays_in_the_log(stack, key, proxy_log):
    response = ask(stack, key, "openai-leak-odd-code")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message == "Upstream provider 'leaky-openai' returned HTTP 400 (invalid_request_error)."
    assert "skproj" not in response.text
