"""A refused key (401) or a refused permission (403) is final: the answer says ``x-should-retry: false`` and
the openai and anthropic SDKs, given retries, send the request once (counted on the wire)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anthropic
import httpx
import openai
import pytest

from tests.integration.gateway_stack import GatewayStack, gateway_stack

if TYPE_CHECKING:
    from collections.abc import Iterator

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[GatewayStack]:
    with gateway_stack(tmp_path_factory.mktemp("retries"), authorizer_cache_seconds=300) as running:
        yield running


class Wire:
    """An HTTP client of the SDK's own httpx flavour that records every response it receives."""

    def __init__(self, httpx_module=httpx) -> None:
        self.responses: list = []
        self.client = httpx_module.Client(event_hooks={"response": [self.responses.append]})


def refused_calls(stack: GatewayStack) -> list[tuple[str, str, str]]:
    """(label, key, model): a malformed key (refused without I/O) and a well-formed key nobody issued."""
    from quotagate import apikeys

    return [("malformed key", "qg_wrong", "mock-gpt"), ("unknown key", apikeys.new_key().plaintext, "mock-gpt")]


def test_a_403_says_not_to_retry():
    """The proxy's 403 (a key whose plan is not configured) is built by errors.permission_error."""
    from quotagate.errors import permission_error

    assert permission_error("Plan 'x' is not configured.", "unknown_plan").headers == {"x-should-retry": "false"}


def test_the_openai_sdk_sends_a_refused_request_once(stack):
    for label, key, model in refused_calls(stack):
        wire = Wire()
        client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=3, http_client=wire.client)
        with pytest.raises((openai.AuthenticationError, openai.PermissionDeniedError)):
            client.chat.completions.create(model=model, max_tokens=1, messages=MESSAGES)  # type: ignore[arg-type]
        assert len(wire.responses) == 1, label
        assert wire.responses[0].status_code in (401, 403), label
        assert wire.responses[0].headers["x-should-retry"] == "false", label


@pytest.mark.parametrize("header", ["x-api-key", "Authorization"])
def test_the_anthropic_sdk_sends_a_refused_request_once(stack, header):
    import httpx2  # the anthropic SDK's own httpx

    for label, key, model in refused_calls(stack):
        wire = Wire(httpx2)
        credential = {"api_key": key} if header == "Authorization" else {"default_headers": {"x-api-key": key}}
        client = anthropic.Anthropic(
            base_url=stack.base_url,
            max_retries=3,
            http_client=wire.client,
            **credential,  # type: ignore[arg-type]
        )
        with pytest.raises((anthropic.AuthenticationError, anthropic.PermissionDeniedError)):
            client.messages.create(model=model, max_tokens=1, messages=MESSAGES)  # type: ignore[arg-type]
        assert len(wire.responses) == 1, label
        sent = wire.responses[0].request.headers
        assert ("x-api-key" in sent) == (header == "x-api-key"), label
        assert wire.responses[0].headers["x-should-retry"] == "false", label
