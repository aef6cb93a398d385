"""Fields that change a provider's price are billed within the key's limits, and recorded as billed
(issue 16, the money half).

The mock upstream bills like the providers document (``real_billing``; see
``quotagate_tools.mock.billing``): search fees per call, service tiers, inference geography and fast
mode as multipliers, audio tokens at their own prices, hidden reasoning tokens and rejected
prediction tokens as output. It never asks the gateway: it adds what each answer it starts costs to
``billed_usd``. Everything runs through the real proxy app, its authorizer and the DynamoDB ledger.

For every such field, on a key of $0.005/day and 1,000 tokens/day: with the price table carrying the
field's modifier, repeated requests are admitted until the budget is spent, the upstream's bill stays
within the limit and the gateway records what the upstream billed; without it, the field is a 400
naming it, the model is never called and nothing is billed.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from quotagate_tools.mock.billing import LIST_PRICES
from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack

USD_PER_DAY = 0.005
TOKENS_PER_DAY = 1000
ATTEMPTS = 9
CAP = 300  # the models' own output maximum: the cap sent when the client sends none

TEXT_PRICE = {"input_per_million": LIST_PRICES.input_per_million, "output_per_million": LIST_PRICES.output_per_million}
# The mock's list prices, copied into the price table as an operator copies a provider's.
LISTED_PRICE = {
    **TEXT_PRICE,
    "audio_input_per_million": LIST_PRICES.audio_input_per_million,
    "audio_output_per_million": LIST_PRICES.audio_output_per_million,
    "service_tiers": dict(LIST_PRICES.service_tiers),
    "inference_geos": dict(LIST_PRICES.inference_geos),
    "fast_mode": LIST_PRICES.fast_mode,
    "tool_calls_usd": {"web_search": LIST_PRICES.web_search_per_call},
}
GPT = "mock-gpt@real_billing=1"
CLAUDE = "claude-mock@real_billing=1"
MODELS = {
    **TEST_CONFIG["models"],
    "gpt-listed": {"provider": "mock", "upstream_model": GPT, "price": LISTED_PRICE, "max_output_tokens": CAP},
    "gpt-plain": {"provider": "mock", "upstream_model": GPT, "price": TEXT_PRICE, "max_output_tokens": CAP},
    "claude-listed": {"provider": "mock-anthropic", "upstream_model": CLAUDE, "price": LISTED_PRICE},
    "claude-plain": {"provider": "mock-anthropic", "upstream_model": CLAUDE, "price": TEXT_PRICE},
    "gpt-listed-no-usage": {
        "provider": "mock",
        "upstream_model": GPT + "&omit_usage=1",
        "price": LISTED_PRICE,
        "max_output_tokens": CAP,
    },
    # Messages' own fields reach the Anthropic target only: the OpenAI one is priced without them.
    "claude-then-gpt": {
        "targets": [
            {"provider": "mock-anthropic", "upstream_model": CLAUDE, "price": LISTED_PRICE},
            {"provider": "mock", "upstream_model": GPT, "price": TEXT_PRICE, "max_output_tokens": CAP},
        ]
    },
    # An organisation whose "auto" requests may be served at priority prices.
    "claude-auto-priority": {
        "provider": "mock-anthropic",
        "upstream_model": CLAUDE,
        "price": {**TEXT_PRICE, "service_tiers": {"auto": 1.75}},
    },
}
PROVIDERS = {
    **TEST_CONFIG["providers"],
    "mock-anthropic": {
        "type": "anthropic",
        "base_url": "${QG_MOCK_BASE_URL}/v1",
        "connect_timeout": 2,
        "read_timeout": 5,
    },
}
ROOMY_USD_PER_DAY = 0.1  # room for a few searches or fast-mode answers, the same 1,000 tokens
PLANS = {
    **TEST_CONFIG["plans"],
    "tight": {
        "limits": {"usd_per_day": USD_PER_DAY, "tokens_per_day": TOKENS_PER_DAY},
        "models": "*",
        "default_max_tokens": 64,
    },
    "dollar": {
        "limits": {"usd_per_day": ROOMY_USD_PER_DAY, "tokens_per_day": TOKENS_PER_DAY},
        "models": "*",
        "default_max_tokens": 64,
    },
}
LIMITS = {"tight": USD_PER_DAY, "dollar": ROOMY_USD_PER_DAY}
REFUSED_FOR_BUDGET = {429: "insufficient_quota", 400: "request_too_large_for_limit"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    overrides = {"models": MODELS, "providers": PROVIDERS, "plans": PLANS}
    with gateway_stack(tmp_path_factory.mktemp("priced"), overrides, token_delay=0.0002) as running:
        yield running


def user(text: str = "Tell me about lighthouses.") -> list[dict]:
    return [{"role": "user", "content": text}]


PREDICTION = {"type": "content", "content": "A lighthouse is a tower with a bright lamp at its top. " * 5}
AUDIO = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}

# name: (endpoint, body without "model", the field a table without its modifier refuses)
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
FIELDS: dict[str, tuple[str, dict, str]] = {
    "chat web_search_options": (
        CHAT,
        {"messages": user(), "web_search_options": {}, "max_tokens": 40},
        "web_search_options",
    ),
    "chat audio output, capped": (CHAT, {"messages": user(), **AUDIO, "max_tokens": 40}, "modalities"),
    "chat audio output, no cap": (CHAT, {"messages": user(), **AUDIO}, "modalities"),
    "chat service_tier priority": (
        CHAT,
        {"messages": user(), "service_tier": "priority", "max_tokens": 40},
        "service_tier",
    ),
    "responses service_tier priority": (
        "/v1/responses",
        {"input": "Tell me about lighthouses.", "service_tier": "priority", "max_output_tokens": 40},
        "service_tier",
    ),
    "messages inference_geo us": (
        MESSAGES,
        {"messages": user(), "inference_geo": "us", "max_tokens": 40},
        "inference_geo",
    ),
    "messages speed fast": (MESSAGES, {"messages": user(), "speed": "fast", "max_tokens": 20}, "speed"),
}
# Bounded, not priced: the same price either way, the hidden output reserved.
BOUNDED: dict[str, tuple[str, dict]] = {
    "chat reasoning_effort, no cap": (CHAT, {"messages": user(), "reasoning_effort": "high"}),
    "chat prediction, no cap": (CHAT, {"messages": user(), "prediction": PREDICTION}),
    "responses reasoning.effort, no cap": (
        "/v1/responses",
        {"input": "Tell me about lighthouses.", "reasoning": {"effort": "high"}},
    ),
}


def post(stack, key: dict, path: str, body: dict) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}{path}", json=body, timeout=60, headers={"authorization": f"Bearer {key['api_key']}"}
    )


def read_whole(response: httpx.Response, stream: bool) -> None:
    """A streamed answer must end cleanly (no error event); a JSON one must parse."""
    if not stream:
        response.json()
        return
    assert "event: error" not in response.text and 'data: {"error"' not in response.text, response.text[-500:]


def spend_the_day(stack, key: dict, path: str, body: dict, model: str) -> tuple[list[int], float, int]:
    """Send the request until the key's budget refuses it: the statuses, what the upstream billed
    in dollars and in tokens meanwhile."""
    usd_before, tokens_before = stack.mock.stats.billed_usd, stack.mock.stats.billed_tokens
    statuses = []
    for attempt in range(ATTEMPTS):
        stream = attempt % 2 == 1
        response = post(stack, key, path, {**body, "model": model, "stream": stream, "mock_reply_tokens": 2000})
        statuses.append(response.status_code)
        if response.status_code != 200:
            # Refused before the model is called: the day is spent, or one request could cost more.
            assert response.status_code in REFUSED_FOR_BUDGET, response.text
            break
        read_whole(response, stream)
        stack.wait_settled(response.headers["x-quotagate-request-id"])
    return statuses, stack.mock.stats.billed_usd - usd_before, stack.mock.stats.billed_tokens - tokens_before


def assert_billed_within_limit_and_recorded(
    stack, key: dict, statuses: list[int], billed_usd: float, billed_tokens: int, usd_per_day: float = USD_PER_DAY
):
    served = statuses.count(200)
    recorded_micros = stack.quota_used(f"key#{key['key_id']}", "usd_per_day")
    recorded_tokens = stack.quota_used(f"key#{key['key_id']}", "tokens_per_day")
    assert billed_usd <= usd_per_day, f"the upstream billed ${billed_usd:.6f} on a ${usd_per_day}/day key"
    assert billed_tokens <= TOKENS_PER_DAY, f"the upstream billed {billed_tokens} tokens on a {TOKENS_PER_DAY}/day key"
    # Dollars are recorded in whole micro-dollars, rounded up per request.
    assert billed_usd * 1e6 - 1 <= recorded_micros <= billed_usd * 1e6 + served, (
        f"recorded {recorded_micros} micro-dollars for ${billed_usd:.6f} billed"
    )
    assert recorded_tokens == billed_tokens


@pytest.mark.parametrize("plan", list(LIMITS))
@pytest.mark.parametrize("name", list(FIELDS))
def test_a_priced_field_is_billed_within_the_limit_and_recorded_as_billed(stack, name, plan):
    path, body, _ = FIELDS[name]
    model = "claude-listed" if path == MESSAGES else "gpt-listed"
    key = stack.create_key(tenant=f"priced-{plan}-{list(FIELDS).index(name)}", plan=plan)
    statuses, billed_usd, billed_tokens = spend_the_day(stack, key, path, body, model)
    assert_billed_within_limit_and_recorded(stack, key, statuses, billed_usd, billed_tokens, LIMITS[plan])
    if plan == "dollar" and name != "chat audio output, no cap":
        assert statuses[0] == 200, "a key with room is served"


@pytest.mark.parametrize("name", list(FIELDS))
def test_a_field_the_price_table_does_not_carry_is_refused_and_costs_nothing(stack, name):
    path, body, param = FIELDS[name]
    model = "claude-plain" if path == MESSAGES else "gpt-plain"
    key = stack.create_key(tenant=f"unpriced-{list(FIELDS).index(name)}", plan="tight")
    calls, billed = stack.mock.stats.chat_requests, stack.mock.stats.billed_usd
    response = post(stack, key, path, {**body, "model": model})
    assert response.status_code == 400, response.text
    if path == MESSAGES:
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
    else:
        error = response.json()["error"]
        assert error["param"] == param and error["code"] == "unpriced_parameter"
    assert f"'{param}'" in error["message"]
    assert stack.mock.stats.chat_requests == calls and stack.mock.stats.billed_usd == billed
    assert stack.quota_used(f"key#{key['key_id']}", "usd_per_day") == 0


@pytest.mark.parametrize("name", list(BOUNDED))
def test_hidden_output_without_a_client_cap_is_reserved_and_billed_within_the_limit(stack, name):
    path, body = BOUNDED[name]
    key = stack.create_key(tenant=f"bounded-{list(BOUNDED).index(name)}", plan="tight")
    statuses, billed_usd, billed_tokens = spend_the_day(stack, key, path, body, "gpt-plain")
    assert statuses[0] == 200, statuses
    assert_billed_within_limit_and_recorded(stack, key, statuses, billed_usd, billed_tokens)


def test_the_tier_the_provider_reports_is_the_tier_settled(stack):
    """A flex request is billed at half price by the upstream, and recorded so."""
    key = stack.create_key(tenant="tier-flex", plan="tight")
    before = stack.mock.stats.billed_usd
    body = {
        "model": "gpt-listed",
        "messages": user(),
        "service_tier": "flex",
        "max_tokens": 40,
        "mock_reply_tokens": 40,
    }
    response = post(stack, key, CHAT, body)
    assert response.status_code == 200, response.text
    assert response.json()["service_tier"] == "flex"
    item = stack.wait_settled(response.headers["x-quotagate-request-id"])
    billed = stack.mock.stats.billed_usd - before
    usage = response.json()["usage"]
    plain = (usage["prompt_tokens"] * 2.5 + usage["completion_tokens"] * 10.0) / 1e6
    assert billed == pytest.approx(plain * 0.5)
    assert billed * 1e6 <= item["usage"]["usd_micros"] <= billed * 1e6 + 1


def test_an_audio_answer_reaches_a_streaming_client_and_its_audio_tokens_are_priced(stack):
    key = stack.create_key(tenant="audio-stream", plan="tight")
    body = {"model": "gpt-listed", "messages": user(), **AUDIO, "max_tokens": 35, "stream": True}
    body["stream_options"] = {"include_usage": True}
    response = post(stack, key, CHAT, {**body, "mock_reply_tokens": 100})
    assert response.status_code == 200, response.text
    chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    transcript = "".join(
        (choice["delta"].get("audio") or {}).get("transcript", "") for chunk in chunks for choice in chunk["choices"]
    )
    assert transcript
    usage = next(chunk["usage"] for chunk in chunks if chunk.get("usage"))
    audio = usage["completion_tokens_details"]["audio_tokens"]
    assert audio > 0 and usage["completion_tokens"] <= 35
    item = stack.wait_settled(response.headers["x-quotagate-request-id"])
    expected = (usage["prompt_tokens"] * 2.5 + (usage["completion_tokens"] - audio) * 10.0 + audio * 80.0) / 1e6
    assert expected * 1e6 <= item["usage"]["usd_micros"] <= expected * 1e6 + 1


def test_an_audio_answer_reaches_a_json_client_assembled(stack):
    key = stack.create_key(tenant="audio-json", plan="tight")
    body = {"model": "gpt-listed", "messages": user(), **AUDIO, "max_tokens": 35, "mock_reply_tokens": 100}
    response = post(stack, key, CHAT, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    audio = answer["choices"][0]["message"]["audio"]
    pieces = answer["usage"]["completion_tokens"] - answer["usage"]["completion_tokens_details"]["audio_tokens"]
    assert audio["id"] and audio["transcript"]
    # The mock's speech is 12 bytes of silence per transcript token: every streamed piece arrived.
    assert len(base64.b64decode(audio["data"])) == 12 * pieces


def test_an_anthropic_request_reserves_at_the_tier_it_may_get_and_settles_at_the_tier_reported(stack):
    key = stack.create_key(tenant="claude-tier", plan="dollar")
    before = stack.mock.stats.billed_usd
    body = {"model": "claude-auto-priority", "messages": user(), "service_tier": "auto", "max_tokens": 40}
    response = post(stack, key, MESSAGES, body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["service_tier"] == "standard"
    item = stack.wait_settled(response.headers["x-quotagate-request-id"])
    billed = stack.mock.stats.billed_usd - before
    reserved_micros = max(c["amount"] for c in item["charges"] if c["sk"].startswith("usd_per_day#"))
    assert reserved_micros >= 1.75 * 40 * 10.0  # the whole cap at the priority factor
    assert billed * 1e6 - 1 <= item["usage"]["usd_micros"] <= billed * 1e6 + 1


@pytest.mark.parametrize(
    "body",
    [
        {**AUDIO, "max_tokens": 40},
        {"reasoning_effort": "high", "max_tokens": 200},
        {"prediction": PREDICTION, "max_tokens": 100},
    ],
    ids=["audio", "reasoning", "prediction"],
)
def test_hidden_output_a_provider_does_not_report_is_settled_at_its_bound(stack, body):
    """Without a usage report, the gateway can count only the text it saw: hidden output is settled
    at what was reserved for it, never below what the provider billed."""
    key = stack.create_key(tenant=f"no-usage-{sorted(body)[0]}", plan="dollar")
    before = stack.mock.stats.billed_usd
    response = post(
        stack, key, CHAT, {"model": "gpt-listed-no-usage", "messages": user(), **body, "mock_reply_tokens": 500}
    )
    assert response.status_code == 200, response.text
    item = stack.wait_settled(response.headers["x-quotagate-request-id"])
    billed = stack.mock.stats.billed_usd - before
    assert item["usage"]["usd_micros"] >= billed * 1e6 - 1, f"recorded {item['usage']['usd_micros']} for ${billed:.6f}"


def test_a_field_one_target_type_never_receives_is_not_priced_on_it(stack):
    key = stack.create_key(tenant="geo-alias", plan="dollar")
    body = {"model": "claude-then-gpt", "messages": user(), "inference_geo": "us", "speed": "fast", "max_tokens": 20}
    response = post(stack, key, MESSAGES, body)
    assert response.status_code == 200, response.text
    assert response.headers["x-quotagate-target"] == f"mock-anthropic/{CLAUDE}"
