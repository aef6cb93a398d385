"""Usage events through the local gateway: every settled reservation becomes exactly one
``Request Settled`` event on the bus, and the rollup's aggregates equal the quota ledger's settled
totals (and the usage the mock reported) per tenant, key and model at every granularity, however
often and in whatever order the events are delivered."""

from __future__ import annotations

import json
import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import httpx
import jsonschema
import pytest

from quotagate.usage.events import REQUEST_SETTLED, load_schema
from quotagate.usage.record import RECORD_ATTRIBUTE
from tests.integration.gateway_stack import TEST_CONFIG, gateway_stack
from tests.integration.usage_helpers import BusSubscriber, expected_aggregates, stored_aggregates

PROMPT_MARKER = "zebracorn-lighthouse-7431"  # must never appear in any event
# This run's tenants: a loaded machine can leave another test's late request running, and only
# these tenants' events and aggregates are this run's.
T1, T2 = f"t1-{uuid.uuid4().hex[:8]}", f"t2-{uuid.uuid4().hex[:8]}"
PRICE = {"input_per_million": 1.0, "output_per_million": 2.0}
MODELS = {
    **TEST_CONFIG["models"],
    "mock-failover": {
        "targets": [
            {"provider": "mock", "upstream_model": "mock-gpt@status=500", "price": PRICE},
            {"provider": "mock", "upstream_model": "mock-gpt", "price": PRICE},
        ]
    },
}
PLANS = {
    "metered": {
        "limits": {"tokens_per_day": 10_000_000, "usd_per_month": 1000},
        "models": "*",
        "default_max_tokens": 64,
    }
}
# Requests of the run: (scenario, count), 200 in all.
SCENARIOS = [
    ("ok", 46),
    ("ok_stream", 38),
    ("failover", 28),
    ("upstream_500", 20),
    ("mid_stream_drop", 24),
    ("tokenizer", 22),
    ("client_disconnect", 22),
]
EXPECTED_OUTCOME = {
    "ok": "ok",
    "ok_stream": "ok",
    "failover": "ok",
    "upstream_500": "upstream_error",
    "mid_stream_drop": "error_event",
    "tokenizer": "ok",
    "client_disconnect": "client_disconnect",
}
MODEL_OF = {
    "ok": "mock-gpt",
    "ok_stream": "mock-gpt",
    "failover": "mock-failover",
    "upstream_500": "mock-500",
    "mid_stream_drop": "mock-drop",
    "tokenizer": "mock-omit",
    "client_disconnect": "mock-gpt",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    overrides = {
        "models": MODELS,
        "plans": {**TEST_CONFIG["plans"], **PLANS},
        "circuit_breaker": {"failure_threshold": 100_000, "cooldown_seconds": 1},
    }
    with gateway_stack(tmp_path_factory.mktemp("usage"), overrides, token_delay=0.002) as stack:
        pipeline = stack.usage_pipeline()
        subscriber = BusSubscriber(boto3.client("events"), boto3.client("sqs"))
        keys = [
            (tenant, stack.create_key(tenant, consumer, plan="metered"))
            for tenant, consumer in ((T1, "alice"), (T1, "bob"), (T2, "carol"))
        ]
        plan = [name for name, count in SCENARIOS for _ in range(count)]
        random.Random(7).shuffle(plan)
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda i: send(stack, keys[i % 3], plan[i], i), range(len(plan))))
        for result in results:
            result["item"] = stack.wait_settled(result["request_id"], timeout=15)
        pipeline.drain(timeout=120)
        yield stack, subscriber, pipeline, results


def send(stack, tenant_key, scenario, index):
    tenant, key = tenant_key
    body = {
        "model": MODEL_OF[scenario],
        "mock_reply_tokens": 5 + index % 17,
        "messages": [{"role": "user", "content": f"{PROMPT_MARKER} question {index}"}],
    }
    headers = {"authorization": f"Bearer {key['api_key']}"}
    url = f"{stack.base_url}/v1/chat/completions"
    seen_usage, text = None, ""
    if scenario in ("ok_stream", "mid_stream_drop", "client_disconnect"):
        body["stream"] = True
        if scenario == "ok_stream":
            body["stream_options"] = {"include_usage": True}
        if scenario == "client_disconnect":
            # Slow enough that the gateway cannot have sent the whole answer when the client leaves.
            body["mock_reply_tokens"], body["mock_fault"] = 60, {"token_delay": 0.05}
        with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
            status, request_id = response.status_code, response.headers["x-quotagate-request-id"]
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    seen_usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    text += (choice.get("delta") or {}).get("content") or ""
                if scenario == "client_disconnect" and len(text) > 10:
                    break  # leave: the with-block closes the connection mid-stream
    else:
        response = httpx.post(url, json=body, headers=headers, timeout=30)
        status, request_id = response.status_code, response.headers["x-quotagate-request-id"]
        if status == 200:
            seen_usage = response.json().get("usage")
            text = response.json()["choices"][0]["message"]["content"]
    return {
        "scenario": scenario,
        "tenant": tenant,
        "key_id": key["key_id"],
        "request_id": request_id,
        "status": status,
        "seen_usage": seen_usage,
        "text": text,
    }


def test_each_settled_reservation_is_exactly_one_event_with_the_right_outcome(run):
    _, subscriber, _, results = run
    events = [e for e in subscriber.of_type(REQUEST_SETTLED) if e["detail"]["tenant"] in (T1, T2)]
    by_id = {}
    for event in events:
        assert event["detail"]["request_id"] not in by_id, "duplicate Request Settled event"
        by_id[event["detail"]["request_id"]] = event
    extra = [by_id[i]["detail"] for i in set(by_id) - {r["request_id"] for r in results}]
    assert not extra, extra
    assert set(by_id) == {r["request_id"] for r in results}
    for result in results:
        detail = by_id[result["request_id"]]["detail"]
        assert detail["outcome"] == EXPECTED_OUTCOME[result["scenario"]], result["scenario"]
        assert (detail["tenant"], detail["key_id"], detail["model"]) == (
            result["tenant"],
            result["key_id"],
            MODEL_OF[result["scenario"]],
        )
        assert detail["status"] == "settled"
        assert int(detail["http_status"]) == result["status"]
        if result["scenario"] == "failover":
            assert (detail["failovers"], detail["target"]) == ("1", "mock/mock-gpt")
        if result["scenario"] in ("tokenizer", "mid_stream_drop", "client_disconnect"):
            assert detail["usage_source"] == "tokenizer", result["scenario"]
        elif result["scenario"] != "upstream_500":
            assert detail["usage_source"] == "provider"
        if result["seen_usage"]:  # what the mock reported is what is billed
            assert int(detail["prompt_tokens"]) == result["seen_usage"]["prompt_tokens"]
            assert int(detail["completion_tokens"]) == result["seen_usage"]["completion_tokens"]
        if result["scenario"] == "upstream_500":
            assert detail["total_tokens"] == "0" and detail["cost_usd_micros"] == "0"


def test_every_event_validates_and_carries_no_prompt_or_completion_text(run):
    _, subscriber, _, results = run
    schema = load_schema(REQUEST_SETTLED)
    events = subscriber.of_type(REQUEST_SETTLED)
    assert events
    completions = [r["text"] for r in results if len(r["text"]) >= 12]
    for event in events:
        assert (event["source"], event["detail-type"]) == ("quotagate", "Request Settled")
        jsonschema.validate(event["detail"], schema)
        raw = json.dumps(event)
        assert PROMPT_MARKER not in raw
        assert not any(text[:12] in raw for text in completions)


def test_aggregates_equal_the_ledgers_settled_totals_at_every_granularity(run):
    _, _, _, results = run
    records = [r["item"][RECORD_ATTRIBUTE] for r in results]
    # The ledger's own settlement (the `usage` it applied to the windows) agrees with the record.
    for result, record in zip(results, records, strict=True):
        assert result["item"]["usage"]["prompt_tokens"] == record["prompt_tokens"]
        assert result["item"]["usage"]["completion_tokens"] == record["completion_tokens"]
        assert result["item"]["usage"]["usd_micros"] == record["cost_usd_micros"]
    expected = expected_aggregates(records)
    stored = {k: v for k, v in stored_aggregates(boto3.client("dynamodb")).items() if k[0].split("#")[1] in (T1, T2)}
    assert stored == expected
    # Two tenants, three keys, and more than three models, each at hour, day and month.
    pks = {pk for pk, _ in stored}
    assert {f"tenant#{T1}", f"tenant#{T2}"} <= pks
    assert len([pk for pk in pks if "#key#" in pk]) == 3
    assert len([pk for pk in pks if "#model#" in pk]) >= 3
    assert {sk.split("#")[0] for _, sk in stored} == {"hour", "day", "month"}


def test_redelivered_and_shuffled_events_change_no_total(run):
    from functions.usage_rollup.handler import lambda_handler
    from quotagate_tools.local.apigateway import FakeLambdaContext
    from quotagate_tools.local.usage_pipeline import sqs_record

    _, subscriber, _, _ = run
    dynamodb = boto3.client("dynamodb")
    before = stored_aggregates(dynamodb)
    events = subscriber.of_type(REQUEST_SETTLED) * 2
    random.Random(11).shuffle(events)
    for start in range(0, len(events), 10):
        batch = [
            sqs_record(
                {"MessageId": f"m{start + i}", "ReceiptHandle": "r", "Body": json.dumps(e)},
                "arn:aws:sqs:us-east-1:123456789012:quotagate-usage-rollup",
            )
            for i, e in enumerate(events[start : start + 10])
        ]
        response = lambda_handler({"Records": batch}, FakeLambdaContext("rollup"))
        assert response == {"batchItemFailures": []}
    assert stored_aggregates(dynamodb) == before


def test_get_usage_returns_the_aggregates_per_tenant_key_consumer_and_model(run):
    stack, _, _, results = run
    records = [r["item"][RECORD_ATTRIBUTE] for r in results]
    mine = [r for r in records if r["tenant"] == T1]

    def ok(**fields):
        response = stack.invoke_keys({"action": "get_usage", "tenant": T1, **fields})
        assert response["ok"], response
        return response["result"]

    for granularity in ("hour", "day", "month"):
        result = ok(granularity=granularity)
        assert result["totals"]["requests"] == len(mine)
        assert result["totals"]["total_tokens"] == sum(r["total_tokens"] for r in mine)
        assert result["totals"]["usd_micros"] == sum(r["cost_usd_micros"] for r in mine)
        assert sum(p["requests"] for p in result["series"]) == len(mine)
    alice = next(
        r["key_id"] for r in results if r["tenant"] == T1 and r["item"][RECORD_ATTRIBUTE]["consumer"] == "alice"
    )
    by_key = ok(key_id=alice)["totals"]
    assert by_key["requests"] == sum(1 for r in mine if r["key_id"] == alice)
    assert ok(consumer="alice")["totals"] == by_key
    by_model = ok(by="model")
    assert {g["model"] for g in by_model["groups"]} == {r["model"] for r in mine}
    for group in by_model["groups"]:
        assert group["totals"]["requests"] == sum(1 for r in mine if r["model"] == group["model"])
        assert group["totals"] == ok(model=group["model"])["totals"]
    outcomes = ok()["totals"]["requests_by_outcome"]
    assert sum(outcomes.values()) == len(mine) and outcomes.get("client_disconnect", 0) >= 1


@pytest.mark.parametrize(
    "fields",
    [
        {"granularity": "week"},
        {"key_id": "k", "model": "mock-gpt"},
        {"by": "tenant"},
        {"from": "2026-12-01", "to": "2026-11-01"},
        {"from": "yesterday"},
        {"granularity": "hour", "from": "2020-01-01"},
    ],
)
def test_get_usage_refuses_bad_requests_like_the_other_actions(run, fields):
    stack = run[0]
    response = stack.invoke_keys({"action": "get_usage", "tenant": T1, **fields})
    assert response["ok"] is False
    assert response["error"]["code"] == "invalid_request"
    assert stack.invoke_keys({"action": "get_usage"})["error"]["code"] == "invalid_request"


def test_cli_prints_a_readable_table_and_json(run, capsys):
    from quotagate_tools import cli

    stack = run[0]
    totals = stack.invoke_keys({"action": "get_usage", "tenant": T1})["result"]["totals"]
    assert cli.main(["usage", "--tenant", T1, "--endpoint-url", stack.base_url]) == 0
    table = capsys.readouterr().out
    assert f"Usage of tenant {T1}" in table
    total_line = next(line for line in table.splitlines() if line.startswith("total"))
    assert f"{totals['requests']:,}" in total_line and f"{totals['total_tokens']:,}" in total_line
    assert (
        cli.main(
            [
                "usage",
                "--tenant",
                T1,
                "--by",
                "model",
                "--granularity",
                "month",
                "--json",
                "--endpoint-url",
                stack.base_url,
            ]
        )
        == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert document["by"] == "model" and document["totals"] == totals
