"""cdk-nag: the AwsSolutions pack runs on every synth, and an unacknowledged finding fails it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import aws_cdk as cdk
import pytest
from aws_cdk import Validations
from aws_cdk import aws_sqs as sqs

from cdk_app import app as app_module
from cdk_app import nag

if TYPE_CHECKING:
    from pathlib import Path

    from constructs import Construct

pytestmark = pytest.mark.infra

# Every acknowledged finding of the stack, by construct path. A new acknowledgment is a decision:
# add it here together with its reason in the construct.
EXPECTED_ACKNOWLEDGMENTS = {
    ("Quotagate/Keys/Handler", "AwsSolutions-IAM5[Resource::*]"),
    ("Quotagate/Keys/Handler", "AwsSolutions-L1"),
    ("Quotagate/Authorizer/Handler", "AwsSolutions-IAM5[Resource::*]"),
    ("Quotagate/Authorizer/Handler", "AwsSolutions-L1"),
    ("Quotagate/Proxy/Handler", "AwsSolutions-IAM5[Resource::*]"),
    ("Quotagate/Proxy/Handler", "AwsSolutions-L1"),
    (
        "Quotagate/Proxy/Handler",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>"
        ":secret:quotagate/providers/*]",
    ),
    ("Quotagate/Proxy/Handler", "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:bedrock:*::foundation-model/*]"),
    (
        "Quotagate/Proxy/Handler",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:bedrock:<AWS::Region>:<AWS::AccountId>:inference-profile/*]",
    ),
    ("Quotagate/Usage/Rollup", "AwsSolutions-IAM5[Resource::*]"),
    ("Quotagate/Usage/Rollup", "AwsSolutions-L1"),
    ("Quotagate/Usage/PeriodClose", "AwsSolutions-IAM5[Resource::*]"),
    ("Quotagate/Usage/PeriodClose", "AwsSolutions-L1"),
    ("Quotagate/Usage/PipeRole", "AwsSolutions-IAM5[Resource::*]"),
    ("Quotagate/Usage/PipeDeadLetterQueue", "AwsSolutions-SQS3"),
    # The scheduled functions' failure queues (on-failure destinations, cdk-nag does not see them).
    ("Quotagate/Usage/PeriodCloseFailures", "AwsSolutions-SQS3"),
    ("Quotagate/Settlements/ReaperFailures", "AwsSolutions-SQS3"),
    ("Quotagate/Gateway/Api", "AwsSolutions-APIG2"),
    (
        "Quotagate/Gateway/Api",
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AmazonAPIGatewayPushToCloudWatchLogs]",
    ),
    ("Quotagate/Gateway/Api/DeploymentStage.prod", "AwsSolutions-APIG3"),
    ("Quotagate/Gateway/Api/Default/v1/{proxy+}/ANY", "AwsSolutions-COG4"),
    ("Quotagate/Gateway/Api/Default/health/GET", "AwsSolutions-APIG4"),
    ("Quotagate/Gateway/Api/Default/health/GET", "AwsSolutions-COG4"),
    ("Quotagate/ProviderSecrets/ProviderOpenai", "AwsSolutions-SMG4"),
    ("Quotagate/ProviderSecrets/ProviderAnthropic", "AwsSolutions-SMG4"),
    ("Quotagate/Keys/KeyDerivationSecret", "AwsSolutions-SMG4"),
    ("Quotagate/Settlements/Consumer", "AwsSolutions-IAM5[Resource::*]"),
    ("Quotagate/Settlements/Consumer", "AwsSolutions-L1"),
    ("Quotagate/Settlements/Reaper", "AwsSolutions-IAM5[Resource::*]"),
    ("Quotagate/Settlements/Reaper", "AwsSolutions-L1"),
}


class _UnencryptedQueueStack(cdk.Stack):
    """Stands in for the Quotagate stack: an SQS queue without DLQ and without enforced TLS."""

    def __init__(self, scope: Construct, construct_id: str, **kwargs: object) -> None:
        super().__init__(scope, construct_id)
        self.queue = sqs.Queue(self, "Queue")


def _violations(outdir: Path) -> set[str]:
    report = json.loads((outdir / "validation-report.json").read_text())
    return {
        violation["ruleName"]
        for plugin in report["pluginReports"]
        if plugin["pluginName"] == "AwsSolutions"
        for violation in plugin["violations"]
    }


def test_full_stack_passes_the_pack_with_every_acknowledgment_in_use(synthesized):
    # The session fixture synthesized build_app()'s app, cdk-nag included, without an error.
    assert (synthesized.outdir / "Quotagate.template.json").exists()
    report = json.loads((synthesized.outdir / "validation-report.json").read_text())
    (plugin,) = [p for p in report["pluginReports"] if p["pluginName"] == "AwsSolutions"]
    assert plugin["conclusion"] == "success"
    assert plugin["violations"] == []
    suppressed = {(v["acknowledgedAt"], v["ruleName"]) for v in plugin["suppressedViolations"]}
    # Each acknowledgment suppresses a real finding: none is stale, none is missing.
    assert suppressed == EXPECTED_ACKNOWLEDGMENTS
    assert all(len(v["reason"]) >= nag.MIN_REASON_LENGTH for v in plugin["suppressedViolations"])


def test_build_app_runs_the_pack_and_unacknowledged_findings_fail_synth(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "QuotagateStack", _UnencryptedQueueStack)
    app, _ = app_module.build_app(outdir=tmp_path)
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    assert {"AwsSolutions-SQS3", "AwsSolutions-SQS4"} <= _violations(tmp_path)


def test_findings_are_acknowledged_one_by_one(tmp_path):
    app = cdk.App(outdir=str(tmp_path))
    stack = _UnencryptedQueueStack(app, "Tiny")
    nag.add_checks(app)
    nag.acknowledge(stack.queue, "AwsSolutions-SQS3", "Only SQS3 acknowledged: SQS4 must still fail synth.")
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    assert _violations(tmp_path) == {"AwsSolutions-SQS4"}


def test_acknowledging_every_finding_lets_synth_pass(tmp_path):
    app = cdk.App(outdir=str(tmp_path))
    stack = _UnencryptedQueueStack(app, "Tiny")
    nag.add_checks(app)
    nag.acknowledge(stack.queue, "AwsSolutions-SQS3", "Test queue: messages that fail are simply dropped.")
    nag.acknowledge(stack.queue, "AwsSolutions-SQS4", "Test queue: never deployed, so no TLS policy needed.")
    app.synth()
    assert (tmp_path / "Tiny.template.json").exists()


def test_acknowledgment_needs_a_real_reason():
    app = cdk.App()
    stack = _UnencryptedQueueStack(app, "Tiny")
    with pytest.raises(ValueError, match="real reason"):
        nag.acknowledge(stack.queue, "AwsSolutions-SQS3", "ok")


def test_stack_acknowledgments_are_individual_and_reasoned(synthesized):
    found = set()
    for construct in synthesized.stack.node.find_all():
        for entry in construct.node.metadata:
            if entry.type != Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                continue
            for rule, reason in entry.data.items():
                assert rule.startswith("AwsSolutions::"), rule
                assert len(reason) >= nag.MIN_REASON_LENGTH, rule
                found.add((construct.node.path, rule.removeprefix("AwsSolutions::")))
    assert found == EXPECTED_ACKNOWLEDGMENTS
