"""The proxy's EMF metrics, as CloudWatch would read them from the function's stdout, for real
requests through the gateway: every name comes from quotagate.metric_names."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from quotagate.metric_names import NAMESPACE, SERVICE, Metric
from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack

PLANS = {
    **TEST_CONFIG["plans"],
    "two-requests": {"limits": {"requests_per_minute": 1}, "models": "*", "default_max_tokens": 64},
}
MESSAGES = [{"role": "user", "content": "Name three rivers."}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("metrics"), {"plans": PLANS}, token_delay=0) as running:
        yield running


@pytest.fixture
def emf(monkeypatch, capfd):
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    capfd.readouterr()

    def read() -> list[dict[str, Any]]:
        out = capfd.readouterr().out
        blobs = []
        for line in out.splitlines():
            if line.startswith("{") and '"_aws"' in line:
                blobs.append(json.loads(line))
        return blobs

    return read


def _metrics(blob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (directive,) = blob["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE

    def value(raw: Any) -> float:
        return sum(raw) if isinstance(raw, list) else raw

    return {
        m["Name"]: {"value": value(blob[m["Name"]]), "unit": m["Unit"], "dimensions": directive["Dimensions"]}
        for m in directive["Metrics"]
    }


def _post(stack, key: str, **extra: Any) -> httpx.Response:
    body = {"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 20, **extra}
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions", json=body, timeout=30, headers={"authorization": f"Bearer {key}"}
    )


def test_a_served_request_emits_requests_tokens_cost_and_timings(stack, emf):
    key = stack.create_key(tenant="metrics-ok", plan="two-requests")["api_key"]
    emf()
    response = _post(stack, key)
    assert response.status_code == 200
    usage = response.json()["usage"]
    found: dict[str, dict[str, Any]] = {}
    for blob in emf():
        assert blob["service"] == SERVICE
        found.update(_metrics(blob))
    assert found[Metric.REQUESTS]["value"] == 1
    dimension_sets = found[Metric.REQUESTS]["dimensions"]
    assert ["service"] in dimension_sets
    for breakdown in (
        ["service", "outcome"],
        ["service", "status_class"],
        ["service", "model"],
        ["service", "target"],
        ["service", "tier"],
    ):
        assert breakdown in dimension_sets
    assert found[Metric.TOKENS_IN]["value"] == usage["prompt_tokens"]
    assert found[Metric.TOKENS_OUT]["value"] == usage["completion_tokens"]
    assert found[Metric.COST_MICRO_USD]["value"] > 0
    for timing in (Metric.TIME_TO_FIRST_BYTE, Metric.DURATION, Metric.GATEWAY_OVERHEAD):
        assert found[timing]["unit"] == "Milliseconds" and found[timing]["value"] >= 0
    assert found[Metric.GATEWAY_OVERHEAD]["value"] <= found[Metric.TIME_TO_FIRST_BYTE]["value"]
    assert found[Metric.TIME_TO_FIRST_BYTE]["value"] <= found[Metric.DURATION]["value"]
    for counter in (Metric.FAILOVERS, Metric.SETTLEMENT_FAILURES, Metric.OVERRUNS):
        assert found[counter]["value"] == 0


def test_a_quota_429_is_counted_by_limit(stack, emf):
    key = stack.create_key(tenant="metrics-429", plan="two-requests")["api_key"]
    assert _post(stack, key).status_code == 200
    emf()
    refused = _post(stack, key)
    assert refused.status_code == 429
    blobs = [_metrics(b) | {"_blob": b} for b in emf()]  # type: ignore[operator]
    throttled = [b for b in blobs if Metric.THROTTLED in b]
    assert len(throttled) == 1
    assert throttled[0]["_blob"]["limit"] == "requests"
    assert ["service", "limit"] in throttled[0][Metric.THROTTLED]["dimensions"]
    requests = [b for b in blobs if Metric.REQUESTS in b]
    assert len(requests) == 1 and requests[0]["_blob"]["outcome"] == "throttled"
