"""Repeated credential headers (issue 18 item 4) and both credential headers on every endpoint
(issue 16 item 5), through the local API Gateway emulator in front of the real authorizer and proxy.

A request that carries two credentials — the same header on two lines (``Bearer A`` then
``Bearer C``, ``Basic ...`` then ``Bearer C``, ``x-api-key`` twice) or one of each header with
different keys — is 401 and billed to nobody, whether the caches are cold or have just served C.
API Gateway hands a REST authorizer the last value of a repeated header in ``headers`` and every
value in ``multiValueHeaders``; the emulator builds the same event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

from tests.integration.gateway_stack import GatewayStack, gateway_stack

if TYPE_CHECKING:
    from collections.abc import Iterator

CHAT = {"model": "mock-gpt", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
CACHE_SECONDS = 300

# (label, header lines); "{A}" is another tenant's key, "{C}" the key that is used alone before.
DUPLICATES: list[tuple[str, list[tuple[str, str]]]] = [
    ("Bearer A, Bearer C", [("Authorization", "Bearer {A}"), ("Authorization", "Bearer {C}")]),
    ("Bearer C, Bearer A", [("Authorization", "Bearer {C}"), ("Authorization", "Bearer {A}")]),
    ("Basic, Bearer C", [("Authorization", "Basic Zm9vOmJhcg=="), ("Authorization", "Bearer {C}")]),
    ("Bearer C, Basic", [("Authorization", "Bearer {C}"), ("Authorization", "Basic Zm9vOmJhcg==")]),
    ("x-api-key A, C", [("x-api-key", "{A}"), ("x-api-key", "{C}")]),
    ("x-api-key garbage, C", [("x-api-key", "garbage"), ("x-api-key", "{C}")]),
    ("x-api-key C, empty", [("x-api-key", "{C}"), ("x-api-key", "")]),
    ("Bearer A + x-api-key C", [("Authorization", "Bearer {A}"), ("x-api-key", "{C}")]),
    ("x-api-key A + Bearer C", [("x-api-key", "{A}"), ("Authorization", "Bearer {C}")]),
    ("Basic + x-api-key C", [("Authorization", "Basic Zm9vOmJhcg=="), ("x-api-key", "{C}")]),
]
# C presented alone, in each of the two headers (what warms the caches).
ALONE = {"Authorization": "Bearer {C}", "x-api-key": "{C}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[GatewayStack, dict[str, str]]]:
    # The deployed defaults: both credential headers, the authorizer's answers cached for 300 s.
    with gateway_stack(tmp_path_factory.mktemp("duplicates"), authorizer_cache_seconds=CACHE_SECONDS) as running:
        limits = {"tokens_per_month": 10**9}
        keys = {
            "A": running.create_key("tenant-a", "other", limits=limits)["api_key"],
            "C": running.create_key("tenant-c", "caller", limits=limits)["api_key"],
        }
        yield running, keys


def billed(stack: GatewayStack, keys: dict[str, str]) -> dict[str, int]:
    return {name: stack.quota_used(f"key#{key.split('_')[1]}", "tokens_per_month") for name, key in keys.items()}


def post(stack: GatewayStack, lines: list[tuple[str, str]], keys: dict[str, str]) -> httpx.Response:
    headers = [(name, value.format(**keys)) for name, value in lines]
    return httpx.post(f"{stack.base_url}/v1/chat/completions", json=CHAT, headers=headers, timeout=10)


@pytest.mark.parametrize(("label", "lines"), DUPLICATES, ids=[label for label, _ in DUPLICATES])
@pytest.mark.parametrize(
    "warm_with", [None, "Authorization", "x-api-key"], ids=["cold", "warm-bearer", "warm-x-api-key"]
)
def test_two_credentials_in_one_request_are_401_and_billed_to_nobody(stack, label, lines, warm_with):
    running, keys = stack
    running.cold_caches()
    if warm_with is not None:
        alone = post(running, [(warm_with, ALONE[warm_with])], keys)
        assert alone.status_code == 200, f"C alone in {warm_with}: {alone.status_code} {alone.text}"
    before = billed(running, keys)
    response = post(running, lines, keys)
    assert response.status_code == 401, f"{label} ({warm_with or 'cold'}): {response.status_code} {response.text}"
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert billed(running, keys) == before, f"{label}: refused, yet billed"


def test_the_same_key_in_both_headers_is_one_credential(stack):
    running, keys = stack
    before = billed(running, keys)
    response = post(running, [("Authorization", "Bearer {C}"), ("x-api-key", "{C}")], keys)
    assert response.status_code == 200, response.text
    after = billed(running, keys)
    assert after["C"] > before["C"] and after["A"] == before["A"]


ENDPOINTS = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/responses", {"model": "mock-gpt", "input": "hi", "max_output_tokens": 16}),
    ("POST", "/v1/messages", {"model": "mock-gpt", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/messages/count_tokens", {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}),
]


@pytest.mark.parametrize("header", ["Authorization", "x-api-key"])
@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[path for _, path, _ in ENDPOINTS])
def test_either_credential_header_works_on_every_endpoint(stack, header, method, path, body):
    running, keys = stack
    value = ALONE[header].format(**keys)
    response = httpx.request(method, f"{running.base_url}{path}", json=body, headers={header: value}, timeout=10)
    assert response.status_code == 200, f"{header} on {path}: {response.status_code} {response.text}"
