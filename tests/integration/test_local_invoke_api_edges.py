"""The local emulation of Lambda's Invoke API (the keys function) answers what Lambda would, at its
edges (issue 18, item 8): a web page's request (it carries ``Origin``; a ``text/plain`` POST needs no
CORS preflight) cannot list, change or revoke keys, and a payload over Lambda's 6 MB limit is refused
before the function runs."""

from __future__ import annotations

import json

import boto3
import httpx
import pytest

from quotagate import tables
from tests.integration.gateway_stack import gateway_stack

pytestmark = pytest.mark.timeout(120)

LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024  # bytes, synchronous invocation


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("invoke-edges")) as running:
        yield running


def invoke_url(stack):
    return f"{stack.base_url}/2015-03-31/functions/quotagate-keys/invocations"


def keys_table():
    client = boto3.client("dynamodb")
    return sorted(json.dumps(i, sort_keys=True) for i in client.scan(TableName=tables.KEYS.name())["Items"])


def test_a_web_pages_request_cannot_touch_the_keys(stack):
    created = stack.create_key(tenant="victim", consumer="c")
    before = keys_table()
    for payload in (
        {"action": "list_keys", "tenant": "victim"},
        {"action": "revoke_key", "key_id": created["key_id"]},
    ):
        response = httpx.post(
            invoke_url(stack),
            content=json.dumps(payload),
            headers={"content-type": "text/plain", "origin": "https://evil.example"},
            timeout=30,
        )
        assert response.status_code == 403, response.text
        assert response.headers["x-amzn-errortype"] == "AccessDeniedException"
        assert "victim" not in response.text and created["key_id"] not in response.text
    assert keys_table() == before, "nothing changed"
    # Without a page's Origin (boto3, the CLI) the same call works.
    listed = httpx.post(invoke_url(stack), json={"action": "list_keys", "tenant": "victim"}, timeout=30)
    assert listed.status_code == 200 and listed.json()["ok"]


@pytest.mark.parametrize("size", [LAMBDA_PAYLOAD_LIMIT + 1, 7 * 1024 * 1024])
def test_a_payload_over_lambdas_limit_is_refused(stack, size):
    before = keys_table()
    prefix = b'{"action": "create_key", "tenant": "big", "consumer": "c", "plan": "free", "pad": "'
    raw = prefix + b"x" * (size - len(prefix) - 2) + b'"}'
    assert len(raw) == size
    response = httpx.post(invoke_url(stack), content=raw, timeout=60)
    assert response.status_code == 413, response.text[:300]
    assert response.headers["x-amzn-errortype"] == "RequestEntityTooLargeException"
    assert str(LAMBDA_PAYLOAD_LIMIT) in response.json()["message"]
    assert keys_table() == before


def test_a_payload_at_the_limit_reaches_the_function(stack):
    prefix = b'{"action": "list_keys", "tenant": "big", "pad": "'
    raw = prefix + b"x" * (LAMBDA_PAYLOAD_LIMIT - len(prefix) - 2) + b'"}'
    response = httpx.post(invoke_url(stack), content=raw, timeout=60)
    assert response.status_code == 200
    assert response.json()["ok"] is False  # the function ran: "pad" is not a field of list_keys
