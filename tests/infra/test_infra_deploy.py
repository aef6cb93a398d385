"""Deploy safety: CDK feature flags, regions, data retention, termination protection, concurrency."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from cdk_app import paths, regions
from cdk_app.app import app_context

pytestmark = pytest.mark.infra


def _recommended_flags() -> dict:
    """The flags ``cdk init`` writes for the installed aws-cdk-lib (shipped inside its jsii tarball)."""
    import aws_cdk

    tarballs = list((Path(aws_cdk.__file__).parent / "_jsii").glob("aws-cdk-lib@*.jsii.tgz"))
    assert len(tarballs) == 1
    with tarfile.open(tarballs[0]) as archive:
        member = archive.extractfile("package/recommended-feature-flags.json")
        assert member is not None
        return json.load(member)


def test_cdk_json_sets_the_flags_cdk_init_writes():
    context = json.loads((paths.ROOT / "cdk.json").read_text())["context"]
    recommended = _recommended_flags()
    assert len(recommended) > 50
    assert {k: context.get(k) for k in recommended} == recommended
    assert context["@aws-cdk/aws-apigateway:authorizerChangeDeploymentLogicalId"] is True


def test_the_app_synthesizes_with_the_flags_of_cdk_json():
    # `python -m cdk_app.app` (tests, make synth) must build what `cdk synth` builds.
    context = app_context({"quotagate:stageName": "test"})
    assert context["@aws-cdk/aws-apigateway:authorizerChangeDeploymentLogicalId"] is True
    assert context["quotagate:stageName"] == "test"


def _deployment_id(tmp_path: Path, **context: object) -> str:
    from aws_cdk.assertions import Template

    from cdk_app.app import build_app

    _, stack = build_app(context=dict(context), outdir=tmp_path / f"out{len(list(tmp_path.iterdir()))}", checks=False)
    deployments = Template.from_stack(stack).find_resources("AWS::ApiGateway::Deployment")
    assert len(deployments) == 1
    return next(iter(deployments))


def test_credential_settings_redeploy_what_they_change(tmp_path):
    """API Gateway's authorizer is always uncached, without identity source (EDGE_AUTHORIZER): the
    answer cache lives in the authorizer function, so its TTL leaves the API deployment as it is; the
    credential headers also change the 401 gateway response (it names them), so a new deployment."""
    base = _deployment_id(tmp_path)
    assert _deployment_id(tmp_path) == base  # stable when nothing changes
    assert _deployment_id(tmp_path, **{"quotagate:authorizerCacheSeconds": "60"}) == base
    assert _deployment_id(tmp_path, **{"quotagate:identitySources": "x-api-key"}) != base


def _synth(tmp_path: Path, name: str = "out", **context: object):
    from aws_cdk.assertions import Template

    from cdk_app.app import build_app

    _, stack = build_app(context=dict(context), outdir=tmp_path / name, checks=False)
    return stack, Template.from_stack(stack).to_json()


def _tables(template: dict) -> dict[str, dict]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::DynamoDB::Table"}


def test_config_parameter_uses_intelligent_tiering(synthesized):
    # A fixed tier fails the update when a config that grew past 4 KB (Advanced) shrinks again.
    (parameter,) = synthesized.of_type("AWS::SSM::Parameter").values()
    assert parameter["Properties"]["Tier"] == "Intelligent-Tiering"


@pytest.mark.parametrize("prefix", ["DataKeysTable", "DataQuotaTable", "DataUsageTable"])
def test_tables_with_customer_data_are_retained_and_deletion_protected(synthesized, prefix):
    (table,) = [t for k, t in _tables(synthesized.json).items() if k.startswith(prefix)]
    assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain"
    assert table["Properties"]["DeletionProtectionEnabled"] is True


def test_a_failed_first_deploy_can_be_cleaned_up_by_the_next_deploy(synthesized):
    """The CDK CLI enables termination protection on a new stack before it executes the change set, and
    deletes a stack that failed creation (ROLLBACK_COMPLETE) before retrying: with protection on by
    default, that delete fails and the retry needs a manual step. The data is protected without it
    (retained, deletion-protected tables); protection is one context setting away once deployed."""
    assert synthesized.stack.termination_protection is False


def test_test_stacks_can_switch_protection_off_and_deployed_stacks_on(tmp_path):
    stack, template = _synth(tmp_path, **{"quotagate:retainData": "false", "quotagate:terminationProtection": "true"})
    assert stack.termination_protection is True
    for logical_id, table in _tables(template).items():
        assert table["DeletionPolicy"] == "Delete", logical_id
        assert not table["Properties"].get("DeletionProtectionEnabled"), logical_id


def test_execution_logs_go_to_a_log_group_the_stack_owns(synthesized):
    (stage_id,) = synthesized.of_type("AWS::ApiGateway::Stage")
    stage = synthesized.resources[stage_id]
    assert stage["Properties"]["MethodSettings"][0]["LoggingLevel"] == "ERROR"
    groups = {
        k: g
        for k, g in synthesized.of_type("AWS::Logs::LogGroup").items()
        if "API-Gateway-Execution-Logs_" in json.dumps(g["Properties"].get("LogGroupName", ""))
    }
    assert len(groups) == 1
    ((group_id, group),) = groups.items()
    name = group["Properties"]["LogGroupName"]["Fn::Join"][1]
    assert name[0] == "API-Gateway-Execution-Logs_"
    assert name[1] == {"Ref": next(iter(synthesized.of_type("AWS::ApiGateway::RestApi")))}
    assert name[2] == f"/{stage['Properties']['StageName']}"
    assert group["Properties"]["RetentionInDays"] == 30
    # Created before the stage can log (else API Gateway creates it without retention, and the
    # stack's group then fails with "already exists").
    assert group_id in stage["DependsOn"]


def _reserved(synthesized, service: str) -> int | None:
    return synthesized.function(service)[1].get("ReservedConcurrentExecutions")


def test_every_reservation_is_switchable_and_checked_against_the_account_quota(tmp_path):
    from tests.infra.conftest import Synthesized

    _, template = _synth(
        tmp_path,
        **{
            "quotagate:accountConcurrencyLimit": "1000",
            "quotagate:proxyReservedConcurrency": "100",
            "quotagate:authorizerReservedConcurrency": "20",
            "quotagate:keysReservedConcurrency": "5",
            "quotagate:reaperReservedConcurrency": "1",
        },
    )
    synthesized = Synthesized(None, None, None, template, tmp_path, 0)
    assert _reserved(synthesized, "quotagate-proxy") == 100
    assert _reserved(synthesized, "quotagate-authorizer") == 20
    assert _reserved(synthesized, "quotagate-keys") == 5
    assert _reserved(synthesized, "quotagate-reaper") == 1
    # With a reservation, an alarm at 80 % of it (beyond it Lambda throttles).
    near_cap = [a for k, a in synthesized.of_type("AWS::CloudWatch::Alarm").items() if "ProxyConcurrencyNearCap" in k]
    assert [a["Properties"]["Threshold"] for a in near_cap] == [80]


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"quotagate:proxyReservedConcurrency": "10"}, "quotagate:accountConcurrencyLimit"),
        (
            {"quotagate:proxyReservedConcurrency": "10", "quotagate:accountConcurrencyLimit": "109"},
            "at least 110",
        ),
        ({"quotagate:reaperReservedConcurrency": "1", "quotagate:accountConcurrencyLimit": "100"}, "at least 101"),
    ],
)
def test_a_reservation_the_account_cannot_give_fails_synthesis(context, message):
    from cdk_app.context import ContextError, DeploymentOptions

    with pytest.raises(ContextError, match=message):
        DeploymentOptions.from_context(context)


def test_template_refuses_unsupported_regions_at_deploy_time(synthesized):
    (assertion,) = synthesized.json["Rules"]["SupportedRegion"]["Assertions"]
    assert assertion["Assert"] == {"Fn::Contains": [list(regions.FUNCTION_URL_REGIONS), {"Ref": "AWS::Region"}]}


@pytest.mark.parametrize("region", ["me-central-1", "ap-southeast-7", "il-central-1"])
def test_synth_fails_early_where_function_urls_do_not_exist(tmp_path, monkeypatch, region):
    monkeypatch.setenv("CDK_DEFAULT_REGION", region)
    with pytest.raises(regions.RegionError, match=r"quotagate:functionUrl=false"):
        _synth(tmp_path)


@pytest.mark.parametrize("region", ["cn-north-1", "cn-northwest-1", "us-gov-west-1", "us-gov-east-1"])
def test_synth_fails_outside_the_aws_partition(tmp_path, monkeypatch, region):
    monkeypatch.setenv("CDK_DEFAULT_REGION", region)
    with pytest.raises(regions.RegionError, match="commercial AWS regions"):
        _synth(tmp_path, **{"quotagate:functionUrl": "false"})


def test_without_function_url_the_stack_deploys_to_more_regions(tmp_path, monkeypatch):
    monkeypatch.setenv("CDK_DEFAULT_REGION", "me-central-1")
    _, template = _synth(tmp_path, **{"quotagate:functionUrl": "false"})
    types = {r["Type"] for r in template["Resources"].values()}
    assert "AWS::Lambda::Url" not in types
    assert "ProxyFunctionUrl" not in template["Outputs"]
    (assertion,) = template["Rules"]["SupportedRegion"]["Assertions"]
    assert "me-central-1" in assertion["Assert"]["Fn::Contains"][0]


def test_readme_lists_the_regions():
    readme = (paths.ROOT / "docs" / "deploying.md").read_text()
    for region in regions.COMMERCIAL_REGIONS:
        assert f"`{region}`" in readme, region
