"""Least privilege: who may touch which table, secret and parameter."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quotagate import tables

pytestmark = pytest.mark.infra

SERVICES = ("quotagate-keys", "quotagate-authorizer", "quotagate-proxy")
DYNAMO_WRITES = {
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:PartiQLInsert",
    "dynamodb:PartiQLUpdate",
    "dynamodb:PartiQLDelete",
}
WRITE_VERBS = ("Put", "Update", "Delete", "Write", "Create", "Insert", "Tag", "Untag", "Restore")


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


def _resources(statement: dict[str, Any]) -> list[Any]:
    resources = statement["Resource"]
    return resources if isinstance(resources, list) else [resources]


def _table_id(synthesized, spec) -> str:
    prefix = f"Data{spec.logical_id}"
    return next(k for k in synthesized.of_type("AWS::DynamoDB::Table") if k.startswith(prefix))


def _statements_on(synthesized, service: str, logical_id: str) -> list[dict[str, Any]]:
    return [s for s in synthesized.statements_of(service) if logical_id in json.dumps(s["Resource"])]


@pytest.mark.parametrize("service", SERVICES)
def test_no_managed_policies_no_wildcard_actions_no_denies(synthesized, service):
    for statement in synthesized.statements_of(service):  # also asserts no managed policies
        assert statement["Effect"] == "Allow"
        assert not any(a.endswith("*") for a in _actions(statement)), statement


@pytest.mark.parametrize("service", SERVICES)
def test_only_xray_uses_a_wildcard_resource(synthesized, service):
    for statement in synthesized.statements_of(service):
        if "*" in _resources(statement):
            assert set(_actions(statement)) == {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


@pytest.mark.parametrize("service", SERVICES)
def test_logs_only_to_its_own_log_group(synthesized, service):
    _, props = synthesized.function(service)
    own_group = props["LoggingConfig"]["LogGroup"]["Ref"]
    log_statements = [s for s in synthesized.statements_of(service) if any(a.startswith("logs:") for a in _actions(s))]
    assert log_statements
    for statement in log_statements:
        assert set(_actions(statement)) == {"logs:CreateLogStream", "logs:PutLogEvents"}
        assert _resources(statement) == [{"Fn::GetAtt": [own_group, "Arn"]}]


def test_keys_function_cannot_touch_the_quota_table(synthesized):
    quota = _table_id(synthesized, tables.QUOTA)
    assert _statements_on(synthesized, "quotagate-keys", quota) == []
    keys = _table_id(synthesized, tables.KEYS)
    idempotency = _table_id(synthesized, tables.IDEMPOTENCY)
    for table in (keys, idempotency):
        actions = {a for s in _statements_on(synthesized, "quotagate-keys", table) for a in _actions(s)}
        assert {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"} <= actions


def test_authorizer_cannot_write_anything(synthesized):
    statements = synthesized.statements_of("quotagate-authorizer")
    for statement in statements:
        for action in _actions(statement):
            if action.startswith(("logs:", "xray:")):
                continue  # its own log stream and traces
            assert action not in DYNAMO_WRITES
            assert not action.split(":", 1)[1].startswith(WRITE_VERBS), action
    keys = _table_id(synthesized, tables.KEYS)
    assert "dynamodb:GetItem" in {
        a for s in _statements_on(synthesized, "quotagate-authorizer", keys) for a in _actions(s)
    }
    for spec in (tables.QUOTA, tables.IDEMPOTENCY):
        assert _statements_on(synthesized, "quotagate-authorizer", _table_id(synthesized, spec)) == []


def test_proxy_writes_quota_and_only_reads_keys(synthesized):
    quota = _table_id(synthesized, tables.QUOTA)
    keys = _table_id(synthesized, tables.KEYS)
    quota_actions = {a for s in _statements_on(synthesized, "quotagate-proxy", quota) for a in _actions(s)}
    assert {"dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:BatchGetItem"} <= quota_actions
    key_actions = {a for s in _statements_on(synthesized, "quotagate-proxy", keys) for a in _actions(s)}
    assert "dynamodb:GetItem" in key_actions
    assert not key_actions & DYNAMO_WRITES
    idempotency = _table_id(synthesized, tables.IDEMPOTENCY)
    assert _statements_on(synthesized, "quotagate-proxy", idempotency) == []


def test_only_the_proxy_reads_and_writes_circuit_state(synthesized):
    circuit = _table_id(synthesized, tables.CIRCUIT)
    actions = {a for s in _statements_on(synthesized, "quotagate-proxy", circuit) for a in _actions(s)}
    # Batched reads of the cached state; conditional updates for every transition.
    assert {"dynamodb:BatchGetItem", "dynamodb:UpdateItem"} <= actions
    for service in ("quotagate-keys", "quotagate-authorizer"):
        assert _statements_on(synthesized, service, circuit) == [], service


def test_only_the_proxy_invokes_bedrock_models(synthesized):
    for service in SERVICES:
        statements = [
            s for s in synthesized.statements_of(service) if any(a.startswith("bedrock:") for a in _actions(s))
        ]
        if service != "quotagate-proxy":
            assert statements == [], service
            continue
        assert len(statements) == 1
        assert set(_actions(statements[0])) == {"bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"}
        resources = json.dumps(_resources(statements[0]))
        assert ":foundation-model/*" in resources and ":inference-profile/*" in resources


def test_only_the_proxy_reads_provider_secrets_and_only_by_prefix(synthesized):
    for service in SERVICES:
        secret_statements = [
            s for s in synthesized.statements_of(service) if any(a.startswith("secretsmanager:") for a in _actions(s))
        ]
        if service == "quotagate-keys":
            # Only its own key derivation secret (quotagate.key_derivation), by reference.
            assert [_resources(s) for s in secret_statements] == [
                [{"Ref": next(k for k in synthesized.resources if k.startswith("KeysKeyDerivationSecret"))}]
            ]
            continue
        if service != "quotagate-proxy":
            assert secret_statements == [], service
            continue
        assert len(secret_statements) == 1
        statement = secret_statements[0]
        assert _actions(statement) == ["secretsmanager:GetSecretValue"]
        (resource,) = _resources(statement)
        assert json.dumps(resource).endswith(':secret:quotagate/providers/*"]]}')


@pytest.mark.parametrize("service", SERVICES)
def test_every_function_reads_the_config_parameter_only(synthesized, service):
    config_id = next(iter(synthesized.of_type("AWS::SSM::Parameter")))
    ssm_statements = [s for s in synthesized.statements_of(service) if any(a.startswith("ssm:") for a in _actions(s))]
    assert len(ssm_statements) == 1
    assert config_id in json.dumps(ssm_statements[0]["Resource"])
    assert all(a.startswith(("ssm:Get", "ssm:Describe")) for a in _actions(ssm_statements[0]))
