"""The settlement retry queue, its consumer, and the reaper's schedule: wiring and least privilege."""

from __future__ import annotations

import json

import pytest

from quotagate import settings

pytestmark = pytest.mark.infra


def _actions(statements):
    found = set()
    for statement in statements:
        actions = statement["Action"]
        found.update([actions] if isinstance(actions, str) else actions)
    return found


def test_the_settlement_queue_has_a_dead_letter_queue_and_is_encrypted(synthesized):
    # The settlement queues (the usage pipeline's are in test_infra_usage.py).
    queues = {k: q for k, q in synthesized.of_type("AWS::SQS::Queue").items() if k.startswith("Settlements")}
    assert len(queues) == 3  # the queue, its dead letters, and the reaper's failure queue
    main = [q for q in queues.values() if "RedrivePolicy" in q["Properties"]]
    assert len(main) == 1 and main[0]["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 10
    assert all(q["Properties"].get("SqsManagedSseEnabled") for q in queues.values())


def test_the_consumer_reports_partial_batch_failures(template):
    template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping", {"FunctionResponseTypes": ["ReportBatchItemFailures"]}
    )


def test_the_reaper_runs_on_a_schedule(template):
    template.has_resource_properties("AWS::Events::Rule", {"ScheduleExpression": "rate(5 minutes)"})


def test_least_privilege_for_the_consumer_and_the_reaper(synthesized):
    consumer = _actions(synthesized.statements_of("quotagate-settlements"))
    assert {a for a in consumer if a.startswith("dynamodb:")} == {"dynamodb:UpdateItem"}
    reaper = _actions(synthesized.statements_of("quotagate-reaper"))
    assert {a for a in reaper if a.startswith("dynamodb:")} == {"dynamodb:Query", "dynamodb:UpdateItem"}
    # Only to its own failure queue (Lambda sends a failed run there with the function's role).
    sends = [s for s in synthesized.statements_of("quotagate-reaper") if "sqs:SendMessage" in json.dumps(s["Action"])]
    assert [json.dumps(s["Resource"]) for s in sends] == [json.dumps({"Fn::GetAtt": [_queue_id(synthesized), "Arn"]})]


def _queue_id(synthesized) -> str:
    (queue_id,) = [k for k in synthesized.of_type("AWS::SQS::Queue") if k.startswith("SettlementsReaperFailures")]
    return queue_id


def test_the_proxy_may_send_to_the_queue_and_knows_its_url(synthesized):
    _, props = synthesized.function("quotagate-proxy")
    assert settings.SETTLEMENT_QUEUE_URL in props["Environment"]["Variables"]
    proxy = _actions(synthesized.statements_of("quotagate-proxy"))
    assert {a for a in proxy if a.startswith("sqs:")} == {
        "sqs:SendMessage",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
    }
