"""Identity confusion through the authorizer cache (issue 7 §1).

A cached answer must only ever serve the credential it was made for. These tests run the real
authorizer and proxy behind the API Gateway emulator WITH the authorizer's cache on, and replay the
attack for every combination of the two credential headers under both identity-source settings:
first a "victim" request, then an "attacker" request with the same identity-source values and a
different other header. Every response must be exactly what the identity-source value alone
decides — served and billed as the key it carries, or refused and billed to nobody.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import httpx
import openai
import pytest

from tests.integration.gateway_stack import GatewayStack, gateway_stack

if TYPE_CHECKING:
    from collections.abc import Iterator

CHAT = {"model": "mock-gpt", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
ABSENT = None

# Values of the Authorization header ("{A}"/"{B}" become the keys of the two clients).
AUTHORIZATION_VALUES: list[str | None] = [
    ABSENT,
    "",
    "Bearer",
    "bearer",
    "Basic Zm9vOmJhcg==",
    "Bearer {A}",
    "Bearer {B}",
    "Bearer garbage",
    "{A}",  # a key without the Bearer scheme is not a well-formed Authorization credential
]
# Values of the x-api-key header.
API_KEY_VALUES: list[str | None] = [ABSENT, "", "{A}", "{B}", "garbage", "Bearer {A}"]


AUTHORIZATION = ("Authorization",)
API_KEY = ("x-api-key",)


@pytest.fixture(scope="module")
def edge(request, tmp_path_factory) -> Iterator[tuple[GatewayStack, tuple[str, ...], dict[str, str]]]:
    with gateway_stack(
        tmp_path_factory.mktemp("identity"), authorizer_cache_seconds=300, identity_sources=request.param
    ) as stack:
        # A monthly token window counts what each key is billed (a minute window would roll over).
        limits = {"tokens_per_month": 10**9}
        keys = {
            "A": stack.create_key("tenant-a", "victim", limits=limits)["api_key"],
            "B": stack.create_key("tenant-b", "attacker", limits=limits)["api_key"],
        }
        yield stack, request.param, keys


def key_id(api_key: str) -> str:
    return api_key.split("_")[1]


def fill(value: str | None, keys: dict[str, str]) -> str | None:
    return None if value is None else value.format(**keys)


def served_as(source: str, value: str | None, keys: dict[str, str]) -> str | None:
    """The key a request must be served as: decided by the identity-source value alone."""
    if value is None:
        return None
    for name, key in keys.items():
        if source.lower() == "authorization" and value == f"Bearer {key}":
            return name
        if source.lower() != "authorization" and value == key:
            return name
    return None


def billed_requests(stack: GatewayStack, keys: dict[str, str]) -> dict[str, int]:
    """Tokens charged so far to each key, read from the quota table."""
    if not hasattr(stack, "quota_reader"):
        import boto3

        from tests.quota_table import QuotaTable

        stack.quota_reader = QuotaTable(boto3.client("dynamodb"))  # type: ignore[attr-defined]
    reader = stack.quota_reader  # type: ignore[attr-defined]
    return {name: reader.usage_of(f"key#{key_id(key)}", "tokens_per_month") for name, key in keys.items()}


def send(stack: GatewayStack, headers: dict[str, str | None]) -> httpx.Response:
    present = {name: value for name, value in headers.items() if value is not None}
    return httpx.post(f"{stack.base_url}/v1/chat/completions", json=CHAT, headers=present, timeout=10)


def check(
    stack: GatewayStack, keys: dict[str, str], headers: dict[str, str | None], expected: str | None, label: str
) -> None:
    before = billed_requests(stack, keys)
    response = send(stack, headers)
    after = billed_requests(stack, keys)
    billed = {name for name in keys if after[name] != before[name]}
    if expected is None:
        assert response.status_code == 401, f"{label}: {response.status_code} {response.text}"
        assert billed == set(), f"{label}: refused, yet billed to {billed}"
    else:
        assert response.status_code == 200, f"{label}: {response.status_code} {response.text}"
        assert billed == {expected}, f"{label}: presented key {expected}, billed to {billed}"


def scenarios(source: str) -> list[tuple[str | None, list[tuple[str | None, str | None]]]]:
    """(identity-source value, [(victim's other header, attacker's other header), ...])."""
    if source.lower() == "authorization":
        own, other = AUTHORIZATION_VALUES, ["{A}", "{B}", ABSENT]
    else:
        own, other = API_KEY_VALUES, ["Bearer {A}", "Bearer {B}", ABSENT]
    return [(value, list(itertools.permutations(other, 2))) for value in own]


@pytest.mark.parametrize(
    ("edge", "case"),
    [(AUTHORIZATION, i) for i in range(len(AUTHORIZATION_VALUES))] + [(API_KEY, i) for i in range(len(API_KEY_VALUES))],
    indirect=["edge"],
    ids=[f"Authorization={v!r}" for v in AUTHORIZATION_VALUES] + [f"x-api-key={v!r}" for v in API_KEY_VALUES],
)
def test_cached_answer_never_serves_a_key_the_request_did_not_present(edge, case):
    stack, sources, keys = edge
    (source,) = sources
    other_header = "x-api-key" if source.lower() == "authorization" else "Authorization"
    own_value, pairs = scenarios(source)[case]
    expected = served_as(source, fill(own_value, keys), keys)
    for victim_other, attacker_other in pairs:
        stack.cold_caches()  # each scenario starts with empty caches
        for who, other in (("victim", victim_other), ("attacker", attacker_other)):
            headers = {source: fill(own_value, keys), other_header: fill(other, keys)}
            label = f"{who}: {source}={own_value!r}, {other_header}={other!r}"
            check(stack, keys, headers, expected, label)


@pytest.mark.parametrize("edge", [AUTHORIZATION], indirect=True, ids=["AUTHORIZATION"])
def test_the_reported_attack_empty_bearer(edge):
    """Issue 7: victim sends 'Authorization: Bearer' plus its x-api-key; then anyone sending
    'Authorization: Bearer' got the victim's cached Allow."""
    stack, _, keys = edge
    check(stack, keys, {"Authorization": "Bearer", "x-api-key": keys["A"]}, None, "victim")
    check(stack, keys, {"Authorization": "Bearer"}, None, "attacker")


@pytest.mark.parametrize("edge", [API_KEY], indirect=True, ids=["API_KEY"])
def test_the_reported_attack_mirror_image(edge):
    """With identity source x-api-key, a key in Authorization must not be cached under x-api-key's value."""
    stack, _, keys = edge
    check(stack, keys, {"x-api-key": "garbage", "Authorization": f"Bearer {keys['A']}"}, None, "victim")
    check(stack, keys, {"x-api-key": "garbage", "Authorization": f"Bearer {keys['B']}"}, None, "attacker")


@pytest.mark.parametrize("edge", [AUTHORIZATION], indirect=True, ids=["AUTHORIZATION"])
def test_openai_sdk_works_with_authorization(edge):
    stack, _, keys = edge
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=keys["A"], max_retries=0)
    before = billed_requests(stack, keys)
    answer = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert answer.choices[0].message.content
    after = billed_requests(stack, keys)
    assert after["A"] > before["A"] and after["B"] == before["B"]


@pytest.mark.parametrize("edge", [AUTHORIZATION], indirect=True, ids=["AUTHORIZATION"])
def test_anthropic_sdk_works_with_authorization(edge):
    """anthropic 2.x (the pinned SDK) sends its api_key as 'Authorization: Bearer'."""
    import anthropic

    stack, _, keys = edge
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=keys["A"], max_retries=0)
    before = billed_requests(stack, keys)
    message = client.messages.create(model="mock-gpt", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert message.content
    after = billed_requests(stack, keys)
    assert after["A"] > before["A"] and after["B"] == before["B"]


@pytest.mark.parametrize("edge", [API_KEY], indirect=True, ids=["API_KEY"])
def test_x_api_key_clients_work_with_x_api_key(edge):
    """Clients that send the key in x-api-key (older anthropic SDKs, Anthropic's HTTP examples, the
    anthropic SDK configured with that header) under identity sources ["x-api-key"]; the same SDK
    sending 'Authorization: Bearer' is refused there, whatever key it carries."""
    import anthropic

    stack, _, keys = edge
    raw = httpx.post(
        f"{stack.base_url}/v1/messages",
        timeout=10,
        headers={"x-api-key": keys["B"], "anthropic-version": "2023-06-01"},
        json={"model": "mock-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert raw.status_code == 200, raw.text
    client = anthropic.Anthropic(
        base_url=stack.base_url, api_key=None, auth_token=None, max_retries=0, default_headers={"x-api-key": keys["B"]}
    )
    before = billed_requests(stack, keys)
    message = client.messages.create(model="mock-gpt", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert message.content
    after = billed_requests(stack, keys)
    assert after["B"] > before["B"] and after["A"] == before["A"]
    bearer = anthropic.Anthropic(base_url=stack.base_url, api_key=keys["A"], max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bearer.messages.create(model="mock-gpt", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert billed_requests(stack, keys)["A"] == after["A"]
