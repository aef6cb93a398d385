"""What accepting both credential headers costs per request.

API Gateway no longer caches the authorizer's answer (quotagate.identity_sources explains why), so
every request invokes the authorizer Lambda, which answers from its own cache keyed by the credential.
This script runs the real authorizer handler in-process against moto and prints:

1. the handler's time per request when its cache answers (the common case: a warm key), when it
   must read the key record (first request of a key per execution environment, or after the TTL),
   and for a refused request (two different credentials: refused before any lookup);
2. the Lambda bill of one invocation per request at the deployed memory size (512 MB, arm64),
   using Lambda's published arm64 prices, billed per started millisecond (minimum 1 ms).

What it cannot measure here: API Gateway's own overhead for invoking an authorizer (a network hop
inside AWS) and the DynamoDB latency of a cache miss (moto is local and in-process).

Usage: python bench/authorizer.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Lambda arm64 prices (us-east-1, first pricing tier): per request and per GB-second.
PRICE_PER_REQUEST = 0.20 / 1_000_000
PRICE_PER_GB_SECOND = 0.0000133334
AUTHORIZER_MEMORY_MB = 512


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def event(headers: list[tuple[str, str]]) -> dict:
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in headers:
        single[name] = value
        multi.setdefault(name, []).append(value)
    return {
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:api/prod/POST/v1/chat/completions",
        "headers": single,
        "multiValueHeaders": multi,
    }


class Context:
    aws_request_id = "bench"


def timed(handler, requests: int, make_event) -> list[float]:
    samples = []
    for i in range(requests):
        request = make_event(i)
        start = time.perf_counter()
        try:
            handler(request, Context())
        except Exception as error:  # the refused case raises "Unauthorized", as API Gateway expects
            if str(error) != "Unauthorized":
                raise
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "POWERTOOLS_LOG_LEVEL": "ERROR",
        }
    )
    import boto3
    from moto import mock_aws

    with mock_aws():
        from quotagate import key_derivation, tables

        tables.create_all(boto3.client("dynamodb"))
        key_derivation.create_local_secret(boto3.client("secretsmanager"))
        from functions.authorizer import handler as authorizer
        from functions.keys.handler import lambda_handler as keys_handler

        keys = []
        for i in range(min(args.requests, 200)):
            created = keys_handler(
                {"action": "create_key", "tenant": "bench", "consumer": f"c{i}", "plan": "free"}, None
            )
            keys.append(created["result"]["api_key"])
        handler = authorizer.lambda_handler
        authorizer.reset()
        timed(handler, 50, lambda i: event([("Authorization", f"Bearer {keys[0]}")]))  # imports, first lookup
        hit = timed(handler, args.requests, lambda i: event([("Authorization", f"Bearer {keys[i % 10]}")]))
        hit_x_api_key = timed(handler, args.requests, lambda i: event([("x-api-key", keys[i % 10])]))
        misses = []
        for _ in range(max(1, args.requests // len(keys))):
            authorizer.reset()
            misses += timed(handler, len(keys), lambda i: event([("x-api-key", keys[i])]))
        refused = timed(
            handler,
            args.requests,
            lambda i: event([("Authorization", f"Bearer {keys[0]}"), ("Authorization", f"Bearer {keys[1]}")]),
        )

    print(f"authorizer handler, in-process, moto ({args.requests} requests per row)")
    print(f"{'case':42} {'median ms':>10} {'p99 ms':>8} {'Lambda $ per 1M requests':>26}")
    for label, samples in (
        ("cache hit (Authorization: Bearer)", hit),
        ("cache hit (x-api-key)", hit_x_api_key),
        ("cache miss (key record read from moto)", misses),
        ("refused: two credentials", refused),
    ):
        median = statistics.median(samples)
        billed_ms = max(1, math.ceil(median))
        per_million = 1_000_000 * (
            PRICE_PER_REQUEST + billed_ms / 1000 * AUTHORIZER_MEMORY_MB / 1024 * PRICE_PER_GB_SECOND
        )
        print(f"{label:42} {median:10.3f} {percentile(samples, 99):8.3f} {per_million:26.3f}")


if __name__ == "__main__":
    main()
