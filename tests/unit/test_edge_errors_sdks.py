"""Every error the edge answers itself (API Gateway's gateway responses deployed, the emulator
locally) is one body for every path, so both client SDKs must read it: the anthropic SDK (on
``/v1/messages``) and the openai SDK (everywhere else) get the right exception class, a readable
message, their ``type`` / ``code`` and the request id. The real SDKs parse the bytes here."""

from __future__ import annotations

import json

import anthropic
import httpx2
import openai
import pytest

from quotagate.edge_errors import REQUEST_ID_HEADERS, gateway_responses

RESPONSES = gateway_responses(["Authorization"])
SUBSTITUTED = "API Gateway's own message"
STATUS_OF_OPEN = {"DEFAULT_4XX": 400, "DEFAULT_5XX": 502}  # statuses API Gateway keeps for these


def rendered(name: str) -> tuple[int, bytes]:
    """What API Gateway sends for the response type: its template with the variable substituted."""
    response = RESPONSES[name]
    body = response.template().replace("$context.error.messageString", json.dumps(SUBSTITUTED))
    return response.status or STATUS_OF_OPEN[name], body.encode()


def transport(name: str) -> httpx2.MockTransport:
    status, body = rendered(name)
    headers = {"content-type": "application/json", **{h: "req-123" for h in REQUEST_ID_HEADERS}}
    return httpx2.MockTransport(lambda request: httpx2.Response(status, content=body, headers=headers))


@pytest.mark.parametrize(
    ("name", "exception", "error_type"),
    [
        ("UNAUTHORIZED", anthropic.AuthenticationError, "authentication_error"),
        ("ACCESS_DENIED", anthropic.AuthenticationError, "authentication_error"),
        ("MISSING_AUTHENTICATION_TOKEN", anthropic.NotFoundError, "not_found_error"),
        ("THROTTLED", anthropic.RateLimitError, "rate_limit_error"),
        ("REQUEST_TOO_LARGE", anthropic.ContentTooLargeError, "request_too_large"),
        ("INTEGRATION_FAILURE", anthropic.ServiceUnavailableError, "overloaded_error"),
        ("DEFAULT_4XX", anthropic.BadRequestError, "invalid_request_error"),
    ],
)
def test_the_anthropic_sdk_reads_every_edge_error(name, exception, error_type):
    client = anthropic.Anthropic(
        api_key="qg_x", base_url="http://edge.test", max_retries=0, http_client=httpx2.Client(transport=transport(name))
    )
    with pytest.raises(exception) as caught:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.type == error_type
    expected = RESPONSES[name].message or SUBSTITUTED
    assert caught.value.api_message == expected
    assert caught.value.request_id == "req-123"


@pytest.mark.parametrize(
    ("name", "exception", "code"),
    [
        ("UNAUTHORIZED", openai.AuthenticationError, "invalid_api_key"),
        ("ACCESS_DENIED", openai.AuthenticationError, "invalid_api_key"),
        ("MISSING_AUTHENTICATION_TOKEN", openai.NotFoundError, "unknown_url"),
        ("THROTTLED", openai.RateLimitError, "rate_limit_exceeded"),
        ("INTEGRATION_FAILURE", openai.InternalServerError, "service_unavailable"),
        ("DEFAULT_4XX", openai.BadRequestError, None),
        ("DEFAULT_5XX", openai.InternalServerError, None),
    ],
)
def test_the_openai_sdk_reads_every_edge_error(name, exception, code):
    client = openai.OpenAI(
        api_key="qg_x",
        base_url="http://edge.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=transport(name)),
    )
    with pytest.raises(exception) as caught:
        client.models.list()
    assert caught.value.code == code
    assert caught.value.body["message"] == (RESPONSES[name].message or SUBSTITUTED)
    assert caught.value.request_id == "req-123"
