"""Dashboard and alarms: every alarm notifies someone, every proxy metric on the dashboard is one the
code emits (the same names, from quotagate.metric_names), and the alarms an operator needs exist."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quotagate.metric_names import NAMESPACE, SERVICE, Metric

pytestmark = pytest.mark.infra


def _text(value: Any) -> str:
    """A template string value with every intrinsic function replaced by a placeholder."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_text(p) for p in parts)
    return "TOKEN"


def _dashboard(synthesized) -> dict[str, Any]:
    (dashboard,) = synthesized.of_type("AWS::CloudWatch::Dashboard").values()
    return json.loads(_text(dashboard["Properties"]["DashboardBody"]))


def _dashboard_metrics(synthesized) -> list[list[Any]]:
    metrics = []
    for widget in _dashboard(synthesized)["widgets"]:
        metrics += widget.get("properties", {}).get("metrics", [])
    return metrics


def test_every_alarm_notifies_the_alarm_topic(synthesized):
    (topic_id,) = synthesized.of_type("AWS::SNS::Topic")
    alarms = synthesized.of_type("AWS::CloudWatch::Alarm")
    assert len(alarms) >= 10
    for alarm_id, alarm in alarms.items():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic_id}], alarm_id


def test_alarm_email_is_subscribed(tmp_path):
    from aws_cdk.assertions import Template

    from cdk_app.app import build_app

    _, stack = build_app(context={"quotagate:alarmEmail": "oncall@example.com"}, outdir=tmp_path, checks=False)
    subscriptions = Template.from_stack(stack).find_resources("AWS::SNS::Subscription")
    assert [s["Properties"]["Protocol"] for s in subscriptions.values()] == ["email"]
    assert [s["Properties"]["Endpoint"] for s in subscriptions.values()] == ["oncall@example.com"]


def test_proxy_metrics_on_the_dashboard_are_the_ones_the_code_emits(synthesized):
    emitted = {m.value for m in Metric}
    shown = set()
    for entry in _dashboard_metrics(synthesized):
        if entry and entry[0] == NAMESPACE:
            assert entry[1] in emitted, entry
            dimensions = dict(zip(entry[2::2], entry[3::2], strict=False))
            assert dimensions.get("service") == SERVICE, entry
            shown.add(entry[1])
    assert shown == emitted, "every metric the proxy emits is on the dashboard"


@pytest.mark.parametrize(
    ("needle", "why"),
    [
        ("ProxyServerErrors", "proxy errors"),
        ("ProxyErrors", "proxy function errors"),
        ("AuthorizerErrors", "authorizer errors"),
        ("AuthorizerThrottles", "throttles"),
        ("ProxyThrottles", "throttles"),
        ("Api5xx", "API 5xx"),
        ("SettlementFailures", "settlement failures"),
        ("BreakerOpens", "breaker open"),
        ("SettlementsReaperErrors", "reaper errors"),
        ("SettlementsConsumerErrors", "settlement consumer errors"),
        ("UsageRollupErrors", "rollup errors"),
        ("UsagePeriodCloseErrors", "period close errors"),
        ("KeysTableThrottles", "DynamoDB throttling"),
        ("QuotaTableThrottles", "DynamoDB throttling"),
        ("QuotaTableSystemErrors", "DynamoDB system errors"),
    ],
)
def test_the_alarms_an_operator_needs_exist(synthesized, needle, why):
    assert any(k.startswith(f"Observability{needle}") for k in synthesized.of_type("AWS::CloudWatch::Alarm")), why


def test_no_concurrency_alarm_without_a_reservation(synthesized):
    # By default nothing is reserved (tests/infra/test_infra_deploy.py has one with reservations).
    assert not [k for k in synthesized.of_type("AWS::CloudWatch::Alarm") if "ConcurrencyNearCap" in k]


def test_dead_letter_queues_get_a_depth_alarm(tmp_path):
    import aws_cdk as cdk
    from aws_cdk import aws_sqs as sqs
    from aws_cdk.assertions import Template

    from cdk_app.app import app_context
    from cdk_app.stack import QuotagateStack

    class WithQueue(QuotagateStack):
        def __init__(self, scope: Any, construct_id: str) -> None:
            self.extra_queue = None
            super().__init__(scope, construct_id)

    app = cdk.App(context=app_context(), outdir=str(tmp_path))
    stack = WithQueue(app, "Quotagate")
    dlq = sqs.Queue(stack, "WorkDlq", enforce_ssl=True)
    sqs.Queue(stack, "Work", enforce_ssl=True, dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=3))
    stack.observability.watch_stack(stack)
    alarms = Template.from_stack(stack).find_resources("AWS::CloudWatch::Alarm")
    (dead_letters,) = [a for k, a in alarms.items() if "WorkDeadLetters" in k]
    assert dead_letters["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert dead_letters["Properties"]["AlarmActions"]


def test_api_execution_and_access_logs_have_retention(synthesized):
    for group_id, group in synthesized.of_type("AWS::Logs::LogGroup").items():
        assert group["Properties"].get("RetentionInDays"), group_id
