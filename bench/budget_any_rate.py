"""What a provider bills against what the gateway recorded, at any token rate (issue 17).

The whole local gateway (moto, the proxy, the local API Gateway) in front of the test suite's own
billing upstream (``tests/billing_upstream.py``: it bills every token it generated until it saw the
connection close). For each rate: a burst of uncapped streams on one key and a sequence of uncapped
streams until the budget refuses; prints limit, admitted requests, billed and recorded tokens.

Usage: python bench/budget_any_rate.py [--rates 50,500,2000,5000] [--streams 20] [--limit 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "core"), str(ROOT / "tools")]
# No AWS: moto on loopback, with the test suite's dummy credentials and region.
for name, value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
}.items():
    os.environ.setdefault(name, value)

import httpx  # noqa: E402

from tests.billing_upstream import BillingUpstream  # noqa: E402
from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack  # noqa: E402

PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}


def post(stack, api_key: str, run: str, rate: int, reply: int) -> httpx.Response:
    body = {
        "model": "billing-gpt",
        "stream": True,
        "messages": [{"role": "user", "content": f"Go on. run={run} rate={rate} reply={reply}"}],
    }
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json=body,
        timeout=120,
        headers={"authorization": f"Bearer {api_key}"},
    )


def measure(stack, upstream, run: str, key_pk: str, responses: list[httpx.Response]) -> tuple[int, int, int]:
    upstream.wait_idle(60)
    for response in responses:
        if response.status_code == 200:
            stack.wait_settled(response.headers["x-quotagate-request-id"], timeout=60)
    admitted = sum(r.status_code == 200 for r in responses)
    return admitted, upstream.billed(run), stack.quota_used(key_pk, "tokens_per_day")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="50,500,2000,5000")
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    with BillingUpstream(tokens_per_second=500) as upstream, tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "providers": {
                **TEST_CONFIG["providers"],
                "billing": {"type": "openai", "base_url": f"{upstream.base_url}/v1"},
            },
            "models": {**TEST_CONFIG["models"], "billing-gpt": {"provider": "billing", "price": PRICE}},
            "plans": {**TEST_CONFIG["plans"], "budget": {"limits": {}, "models": "*", "default_max_tokens": 64}},
        }
        with gateway_stack(Path(tmp), overrides) as stack:
            print(f"{'case':<28}{'tokens/s':>9}{'limit':>8}{'admitted':>10}{'billed':>8}{'recorded':>10}{'seconds':>9}")
            for rate in rates:
                for case in ("burst", "sequence"):
                    run = f"{case}-{rate}"
                    key = stack.create_key(tenant=run, plan="budget", limits={"tokens_per_day": args.limit})
                    started = time.monotonic()
                    reply = 2 * args.limit // args.streams if case == "burst" else 1_000_000
                    if case == "burst":
                        with ThreadPoolExecutor(max_workers=args.streams) as pool:
                            calls = [
                                pool.submit(post, stack, key["api_key"], run, rate, reply) for _ in range(args.streams)
                            ]
                            responses = [call.result() for call in calls]
                    else:
                        responses = []
                        while not responses or (responses[-1].status_code == 200 and len(responses) < 10):
                            responses.append(post(stack, key["api_key"], run, rate, reply))
                    admitted, billed, recorded = measure(stack, upstream, run, f"key#{key['key_id']}", responses)
                    label = f"{case} ({args.streams} streams)" if case == "burst" else "sequence (uncapped)"
                    print(
                        f"{label:<28}{rate:>9}{args.limit:>8}{admitted:>10}{billed:>8}{recorded:>10}"
                        f"{time.monotonic() - started:>9.1f}"
                    )


if __name__ == "__main__":
    main()
