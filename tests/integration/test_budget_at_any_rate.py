"""The provider can never generate past what is reserved, at any token rate (issue 17).

The upstream is the test suite's own (:mod:`tests.billing_upstream`): it bills every token it
generated until it saw the connection close, as the providers do, whether or not the gateway read
it. Through the real proxy and the DynamoDB ledger on moto, for bursts, sequences and mixed
protocols at 50, 500 and 2,000 tokens/s: what the upstream billed never passes the limit, and what
the gateway recorded (the window's counter) is exactly what it billed.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.billing_upstream import BillingUpstream
from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack

pytestmark = pytest.mark.timeout(120)
PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}
RUNS = itertools.count()


@pytest.fixture(scope="module")
def upstream():
    with BillingUpstream(tokens_per_second=500) as running:
        yield running


@pytest.fixture(scope="module")
def stack(tmp_path_factory, upstream):
    overrides = {
        "providers": {
            **TEST_CONFIG["providers"],
            "billing": {
                "type": "openai",
                "base_url": f"{upstream.base_url}/v1",
                "connect_timeout": 2,
                "read_timeout": 5,
            },
        },
        "models": {
            **TEST_CONFIG["models"],
            "billing-gpt": {"provider": "billing", "price": PRICE},
            # A high-resolution Claude model behind an OpenAI-compatible endpoint.
            "billing-claude": {"provider": "billing", "upstream_model": "claude-opus-4-7", "price": PRICE},
        },
        "plans": {**TEST_CONFIG["plans"], "budget": {"limits": {}, "models": "*", "default_max_tokens": 64}},
    }
    with gateway_stack(tmp_path_factory.mktemp("any-rate"), overrides) as running:
        yield running


def ask(run: str, rate: int, reply: int, extra: str = "") -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Tell me everything. run={run} rate={rate} reply={reply} {extra}"}]


def post(stack, api_key: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{stack.base_url}{path}", json=body, timeout=60, headers={"authorization": f"Bearer {api_key}"})


def settle_all(stack, responses: list[httpx.Response]) -> None:
    for response in responses:
        if response.status_code == 200:
            stack.wait_settled(response.headers["x-quotagate-request-id"], timeout=30)


def check_bill(stack, upstream, run: str, scope_pk: str, limit: int, responses: list[httpx.Response]) -> None:
    assert all(r.status_code in (200, 429) for r in responses), [r.text for r in responses if r.status_code >= 500]
    assert any(r.status_code == 200 for r in responses)
    upstream.wait_idle()
    settle_all(stack, responses)
    billed = upstream.billed(run)
    recorded = stack.quota_used(scope_pk, "tokens_per_day")
    assert billed <= limit, f"the provider billed {billed} tokens on a limit of {limit}"
    assert recorded == billed, f"recorded {recorded}, billed {billed}"


# (tokens/s, tokens_per_day, concurrent streams, natural length of each answer): demand is twice the limit.
BURSTS = [(50, 600, 12, 100), (500, 3000, 20, 300), (2000, 3000, 20, 300)]


@pytest.mark.parametrize(("rate", "limit", "streams", "reply"), BURSTS, ids=[f"{b[0]}tps" for b in BURSTS])
def test_a_burst_of_uncapped_streams_never_makes_the_provider_bill_past_the_limit(
    stack, upstream, rate, limit, streams, reply
):
    run = f"burst-{next(RUNS)}"
    key = stack.create_key(tenant=run, plan="budget", limits={"tokens_per_day": limit})
    body = {"model": "billing-gpt", "messages": ask(run, rate, reply), "stream": True}
    with ThreadPoolExecutor(max_workers=streams) as pool:
        responses = list(pool.map(lambda _: post(stack, key["api_key"], "/v1/chat/completions", body), range(streams)))
    check_bill(stack, upstream, run, f"key#{key['key_id']}", limit, responses)


SEQUENCES = [(50, 150), (500, 600), (2000, 1500)]


@pytest.mark.parametrize(("rate", "limit"), SEQUENCES, ids=[f"{s[0]}tps" for s in SEQUENCES])
def test_sequential_uncapped_streams_never_make_the_provider_bill_past_the_limit(stack, upstream, rate, limit):
    run = f"sequence-{next(RUNS)}"
    key = stack.create_key(tenant=run, plan="budget", limits={"tokens_per_day": limit})
    responses = []
    for _ in range(4):  # each answer would go on for ever: only the budget ends it
        body = {"model": "billing-gpt", "messages": ask(run, rate, 100_000), "stream": True}
        responses.append(post(stack, key["api_key"], "/v1/chat/completions", body))
        if responses[-1].status_code == 429:
            break
    check_bill(stack, upstream, run, f"key#{key['key_id']}", limit, responses)


@pytest.mark.parametrize("rate", [50, 500, 2000], ids=lambda r: f"{r}tps")
def test_a_mixed_burst_on_three_keys_of_one_tenant_never_passes_the_tenant_limit(stack, upstream, rate):
    run = f"mixed-{next(RUNS)}"
    limit, wide = 4000 if rate > 50 else 800, 60 if rate > 50 else 12
    reply = limit // (wide // 2)  # the burst asks for about twice the limit
    created = stack.invoke_keys({"action": "create_tenant", "tenant": run, "limits": {"tokens_per_day": limit}})
    assert created["ok"], created
    keys = [stack.create_key(tenant=run, consumer=f"c{i}", plan="budget")["api_key"] for i in range(3)]
    calls = [
        ("/v1/chat/completions", {"model": "billing-gpt", "messages": ask(run, rate, reply), "stream": True}),
        ("/v1/messages", {"model": "billing-gpt", "max_tokens": reply + 50, "messages": ask(run, rate, reply)}),
        ("/v1/responses", {"model": "billing-gpt", "input": f"run={run} rate={rate} reply={reply}", "stream": True}),
    ]

    def one(i: int) -> httpx.Response:
        path, body = calls[i % 3]
        return post(stack, keys[(i // 3) % 3], path, body)

    with ThreadPoolExecutor(max_workers=wide) as pool:
        responses = list(pool.map(one, range(wide)))
    check_bill(stack, upstream, run, f"tenant#{run}", limit, responses)


def test_the_meter_the_cut_and_the_settlement_count_an_answer_alike(stack, upstream):
    """Deltas of ``"w "`` are one token each to the provider and in the joined text: an uncapped
    answer that fits the budget arrives whole, and its count is the provider's."""
    run = f"one-count-{next(RUNS)}"
    key = stack.create_key(tenant=run, plan="budget", limits={"tokens_per_day": 3000})
    upstream.delta_text = "w "
    try:
        body = {"model": "billing-gpt", "messages": ask(run, 2000, 1500), "stream": False}
        response = post(stack, key["api_key"], "/v1/chat/completions", body)
    finally:
        upstream.delta_text = " w"
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["finish_reason"] == "stop", "cut while the budget had room"
    assert answer["choices"][0]["message"]["content"] == "w " * 1500
    check_bill(stack, upstream, run, f"key#{key['key_id']}", 3000, [response])


def test_images_on_a_high_resolution_claude_model_never_pass_the_limit(stack, upstream):
    """20 requests with a large image each on a model that bills up to 4,787 tokens per image."""
    run = f"images-{next(RUNS)}"
    limit = 40_000
    key = stack.create_key(tenant=run, plan="budget", limits={"tokens_per_day": limit})
    image = {"type": "image_url", "image_url": {"url": "https://example.com/large.png", "detail": "high"}}
    content = [{"type": "text", "text": f"Describe it. run={run} rate=2000 reply=50"}, image]
    body = {"model": "billing-claude", "messages": [{"role": "user", "content": content}], "stream": True}
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: post(stack, key["api_key"], "/v1/chat/completions", body), range(20)))
    check_bill(stack, upstream, run, f"key#{key['key_id']}", limit, responses)
