"""End to end: ``python -m quotagate_tools.local`` (what ``make dev`` runs) as a separate process, keys
created through the CLI, and the ``openai`` SDK as the client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import boto3
import openai
import pytest

from tests.e2e.local_gateway import running_local_gateway

pytestmark = pytest.mark.e2e
TOKEN_DELAY = 0.03


@pytest.fixture(scope="module")
def gateway():
    # One test sets the mock's reply length through the gateway.
    with running_local_gateway(TOKEN_DELAY, {"QG_FORWARD_MOCK_CONTROLS": "1"}) as running:
        yield running


def cli(*args: str) -> dict:
    command = [str(Path(sys.executable).with_name("quotagate")), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def new_key(gateway, tenant: str, *extra: str) -> str:
    created = cli(
        "keys",
        "create",
        "--tenant",
        tenant,
        "--consumer",
        "sdk",
        "--plan",
        "free",
        "--endpoint-url",
        gateway["base"],
        *extra,
    )
    assert created["api_key"].startswith("qg_")
    return created["api_key"]


def test_prints_the_two_lines_and_the_demo_key_works(gateway):
    assert gateway["OPENAI_BASE_URL"] == f"{gateway['base']}/v1"
    client = openai.OpenAI(base_url=gateway["OPENAI_BASE_URL"], api_key=gateway["OPENAI_API_KEY"], max_retries=0)
    assert "mock-gpt" in [m.id for m in client.models.list()]


def test_openai_sdk_non_stream_with_a_key_from_the_cli(gateway):
    client = openai.OpenAI(base_url=f"{gateway['base']}/v1", api_key=new_key(gateway, "e2e"), max_retries=0)
    completion = client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "Say something."}], max_tokens=6
    )
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens == 6
    assert completion.model == "mock-gpt"


def test_openai_sdk_stream_arrives_before_the_upstream_has_finished(gateway):
    client = openai.OpenAI(base_url=f"{gateway['base']}/v1", api_key=new_key(gateway, "e2e-stream"), max_retries=0)
    n_tokens = 20
    started = time.monotonic()
    arrivals, text = [], []
    stream = client.chat.completions.create(
        model="mock-gpt",
        messages=[{"role": "user", "content": "Stream please."}],
        max_tokens=n_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
            text.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == n_tokens == len(text)
    # The upstream needs n_tokens * TOKEN_DELAY to produce the answer; the first chunk must reach
    # the client long before the last one is even produced.
    upstream_duration = n_tokens * TOKEN_DELAY
    assert arrivals[-1] - arrivals[0] >= 0.5 * upstream_duration, arrivals
    assert arrivals[0] < arrivals[-1] - 0.5 * upstream_duration


def test_saas_backend_provisions_keys_with_boto3(gateway):
    client = boto3.client(
        "lambda",
        endpoint_url=gateway["base"],
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    payload = {"action": "create_key", "tenant": "acme", "consumer": "backend", "plan": "free", "request_id": "req-1"}
    first = json.loads(client.invoke(FunctionName="quotagate-keys", Payload=json.dumps(payload))["Payload"].read())
    again = json.loads(client.invoke(FunctionName="quotagate-keys", Payload=json.dumps(payload))["Payload"].read())
    assert first["ok"] and first["result"]["api_key"] == again["result"]["api_key"]
    listed = json.loads(
        client.invoke(FunctionName="quotagate-keys", Payload=json.dumps({"action": "list_keys", "tenant": "acme"}))[
            "Payload"
        ].read()
    )
    assert [k["key_id"] for k in listed["result"]["keys"]] == [first["result"]["key_id"]]
    assert "api_key" not in json.dumps(listed) and "hash" not in json.dumps(listed)


def test_a_tiny_token_limit_gets_429s_with_ratelimit_headers(gateway):
    key = new_key(gateway, "e2e-tiny", "--limits", '{"tokens_per_minute": 150}')
    client = openai.OpenAI(base_url=f"{gateway['base']}/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    while time.time() % 60 > 50:  # keep both requests in one minute window
        time.sleep(0.5)
    # The mock answers with exactly 100 tokens, so the first request really uses its reservation.
    client.chat.completions.create(
        model="mock-gpt", messages=messages, max_tokens=100, extra_body={"mock_reply_tokens": 100}
    )
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="mock-gpt", messages=messages, max_tokens=100)
    headers = caught.value.response.headers
    assert caught.value.code == "rate_limit_exceeded"
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-tokens"] == "150"
    assert "x-ratelimit-remaining-tokens" in headers and "x-ratelimit-reset-tokens" in headers


@pytest.mark.parametrize("model", ["mock-gpt", "mock-claude", "mock-bedrock", "chat-failover"])
def test_same_answer_shape_whichever_provider_serves(gateway, model):
    """OpenAI-compatible, Anthropic and Bedrock upstreams (and an alias that fails over to one)
    all look the same to the openai SDK."""
    key = cli(
        "keys",
        "create",
        "--tenant",
        "e2e-providers",
        "--consumer",
        "sdk",
        "--plan",
        "pro",
        "--endpoint-url",
        gateway["base"],
    )["api_key"]
    client = openai.OpenAI(base_url=f"{gateway['base']}/v1", api_key=key, max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, max_tokens=5)
    completion = raw.parse()
    assert raw.headers["x-quotagate-target"]
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    pieces, usage = [], None
    for chunk in client.chat.completions.create(
        model=model, messages=messages, max_tokens=5, stream=True, stream_options={"include_usage": True}
    ):
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == completion.choices[0].message.content
    assert usage is not None and usage.completion_tokens == 5
