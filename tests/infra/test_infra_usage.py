"""The usage pipeline in the stack: stream, pipe (with the filter and template of the one core
definition), bus, rule, queue + dead-letter queue with alarms, rollup and period-close functions,
least-privilege roles."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quotagate import settings, tables
from quotagate.usage import pipe

pytestmark = pytest.mark.infra


def _one(synthesized, resource_type: str, prefix: str = "") -> tuple[str, dict[str, Any]]:
    found = {k: r for k, r in synthesized.of_type(resource_type).items() if k.startswith(prefix)}
    assert len(found) == 1, (resource_type, prefix, list(found))
    logical_id, resource = next(iter(found.items()))
    return logical_id, resource["Properties"]


def _table_id(synthesized, spec) -> str:
    return next(k for k in synthesized.of_type("AWS::DynamoDB::Table") if k.startswith(f"Data{spec.logical_id}"))


def _actions(statement) -> set[str]:
    actions = statement["Action"]
    return {actions} if isinstance(actions, str) else set(actions)


def test_quota_table_streams_new_images(synthesized):
    props = synthesized.resources[_table_id(synthesized, tables.QUOTA)]["Properties"]
    assert props["StreamSpecification"] == {"StreamViewType": "NEW_IMAGE"}


def test_bus_is_named_quotagate(synthesized):
    _, props = _one(synthesized, "AWS::Events::EventBus")
    assert props["Name"] == "quotagate"


def test_pipe_reads_the_quota_stream_with_the_core_filter_and_template(synthesized):
    _, props = _one(synthesized, "AWS::Pipes::Pipe")
    quota = _table_id(synthesized, tables.QUOTA)
    assert props["Source"] == {"Fn::GetAtt": [quota, "StreamArn"]}
    bus_id, _ = _one(synthesized, "AWS::Events::EventBus")
    assert props["Target"] == {"Fn::GetAtt": [bus_id, "Arn"]}
    source = props["SourceParameters"]
    (stream_filter,) = source["FilterCriteria"]["Filters"]
    assert json.loads(stream_filter["Pattern"]) == pipe.FILTER_PATTERN
    assert json.loads(stream_filter["Pattern"])["dynamodb"]["NewImage"]["status"]["S"] == ["settled", "expired"]
    stream = source["DynamoDBStreamParameters"]
    assert stream["StartingPosition"] == "TRIM_HORIZON"
    assert stream["MaximumRetryAttempts"] >= 1 and "Arn" in stream["DeadLetterConfig"]
    target = props["TargetParameters"]
    assert target["InputTemplate"] == pipe.input_template()
    assert target["EventBridgeEventBusParameters"] == {"Source": "quotagate", "DetailType": "Request Settled"}


def test_pipe_role_reads_only_the_quota_stream_and_puts_only_on_the_bus(synthesized):
    _, pipe_props = _one(synthesized, "AWS::Pipes::Pipe")
    role_id = pipe_props["RoleArn"]["Fn::GetAtt"][0]
    role = synthesized.resources[role_id]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "pipes.amazonaws.com"}
    policies = [p["Properties"] for p in synthesized.of_type("AWS::IAM::Policy").values()]
    statements = [s for p in policies if {"Ref": role_id} in p["Roles"] for s in p["PolicyDocument"]["Statement"]]
    quota = _table_id(synthesized, tables.QUOTA)
    bus_id, _ = _one(synthesized, "AWS::Events::EventBus")
    by_action = {a: s for s in statements for a in _actions(s)}
    assert set(by_action) == {
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
        "events:PutEvents",
        "sqs:SendMessage",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
    }
    assert by_action["dynamodb:GetRecords"]["Resource"] == {"Fn::GetAtt": [quota, "StreamArn"]}
    assert by_action["events:PutEvents"]["Resource"] == {"Fn::GetAtt": [bus_id, "Arn"]}
    assert by_action["dynamodb:ListStreams"]["Resource"] == "*"  # no resource-level permissions exist


def test_rule_sends_request_settled_to_the_rollup_queue_with_a_dead_letter_queue(synthesized):
    rules = [r["Properties"] for r in synthesized.of_type("AWS::Events::Rule").values()]
    (rule,) = [r for r in rules if r.get("EventPattern", {}).get("detail-type") == ["Request Settled"]]
    assert rule["EventPattern"] == {"source": ["quotagate"], "detail-type": ["Request Settled"]}
    bus_id, _ = _one(synthesized, "AWS::Events::EventBus")
    assert rule["EventBusName"] == {"Ref": bus_id}
    (target,) = rule["Targets"]
    queue_id = target["Arn"]["Fn::GetAtt"][0]
    queue = synthesized.resources[queue_id]["Properties"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 5
    dlq_id = queue["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
    assert synthesized.resources[dlq_id]["Type"] == "AWS::SQS::Queue"
    for queue_id_ in (queue_id, dlq_id):  # encrypted at rest
        assert synthesized.resources[queue_id_]["Properties"]["SqsManagedSseEnabled"] is True


def test_both_dead_letter_queues_have_a_depth_alarm(synthesized):
    alarmed = {
        a["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for a in synthesized.of_type("AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible"
    }
    _, pipe_props = _one(synthesized, "AWS::Pipes::Pipe")
    pipe_dlq = pipe_props["SourceParameters"]["DynamoDBStreamParameters"]["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
    rules = [r["Properties"] for r in synthesized.of_type("AWS::Events::Rule").values()]
    (rule,) = [r for r in rules if r.get("EventPattern", {}).get("detail-type") == ["Request Settled"]]
    rollup_queue = synthesized.resources[rule["Targets"][0]["Arn"]["Fn::GetAtt"][0]]["Properties"]
    rollup_dlq = rollup_queue["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
    assert {pipe_dlq, rollup_dlq} <= alarmed


def test_rollup_consumes_the_queue_with_partial_batch_failures(synthesized):
    function_id, props = synthesized.function("quotagate-usage_rollup")
    mapping = next(
        m["Properties"]
        for m in synthesized.of_type("AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"] == {"Ref": function_id}
    )
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] == 10
    variables = props["Environment"]["Variables"]
    assert variables[settings.USAGE_TABLE] == {"Ref": _table_id(synthesized, tables.USAGE)}
    assert variables[settings.BUDGET_THRESHOLDS] == "0.5,0.8,1"


@pytest.mark.parametrize("service", ["quotagate-usage_rollup", "quotagate-usage_period_close"])
def test_usage_functions_touch_only_the_usage_table_and_the_bus(synthesized, service):
    usage = _table_id(synthesized, tables.USAGE)
    others = [_table_id(synthesized, t) for t in tables.ALL_TABLES if t is not tables.USAGE]
    bus_id, _ = _one(synthesized, "AWS::Events::EventBus")
    for statement in synthesized.statements_of(service):
        actions = _actions(statement)
        resource = json.dumps(statement["Resource"])
        if any(a.startswith("dynamodb:") for a in actions):
            assert usage in resource
            assert not any(other in resource for other in others), statement
        if "events:PutEvents" in actions:
            assert statement["Resource"] == {"Fn::GetAtt": [bus_id, "Arn"]}
        assert not any(a.endswith("*") for a in actions)


def test_keys_function_only_reads_the_usage_table(synthesized):
    usage = _table_id(synthesized, tables.USAGE)
    actions = {
        a
        for s in synthesized.statements_of("quotagate-keys")
        if usage in json.dumps(s["Resource"])
        for a in _actions(s)
    }
    assert {"dynamodb:Query", "dynamodb:GetItem"} <= actions
    assert not any(a.split(":", 1)[1].startswith(("Put", "Update", "Delete", "BatchWrite")) for a in actions)


def test_period_close_runs_hourly(synthesized):
    function_id, _ = synthesized.function("quotagate-usage_period_close")
    target = {"Fn::GetAtt": [function_id, "Arn"]}
    (rule,) = [
        r["Properties"]
        for r in synthesized.of_type("AWS::Events::Rule").values()
        if r["Properties"].get("ScheduleExpression") and r["Properties"]["Targets"][0]["Arn"] == target
    ]
    assert rule["ScheduleExpression"] == "rate(1 hour)"
    (permission,) = [
        p["Properties"]
        for p in synthesized.of_type("AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == target
    ]
    assert permission["Principal"] == "events.amazonaws.com" and "SourceArn" in permission


def test_usage_table_has_the_period_index(synthesized):
    props = synthesized.resources[_table_id(synthesized, tables.USAGE)]["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert [i["IndexName"] for i in props["GlobalSecondaryIndexes"]] == ["by_period"]
