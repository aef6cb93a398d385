"""Deploy-day defects (issue 19): what a real ``cdk deploy`` and production would hit, pinned on the
synthesized template — alarms that can notify, a first deploy that fits a fresh account and can be
retried, no silent background function, bisecting pipe, overload answered with Retry-After."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cdk_app import paths
from quotagate import edge_errors

pytestmark = pytest.mark.infra


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# ---- 1. the alarm topic's key lets CloudWatch publish ----------------------------------------------


def test_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use(synthesized):
    (topic,) = synthesized.of_type("AWS::SNS::Topic").values()
    key_ref = topic["Properties"]["KmsMasterKeyId"]
    # Not alias/aws/sns: the AWS-managed key's policy cannot grant CloudWatch, so every alarm action
    # would fail with KMSAccessDenied.
    assert "alias/aws/sns" not in json.dumps(key_ref), key_ref
    assert set(key_ref) & {"Fn::GetAtt", "Ref"}, key_ref
    key_id = key_ref.get("Fn::GetAtt", [key_ref.get("Ref")])[0]
    key = synthesized.resources[key_id]
    assert key["Type"] == "AWS::KMS::Key"
    assert key["Properties"]["EnableKeyRotation"] is True
    statements = key["Properties"]["KeyPolicy"]["Statement"]
    cloudwatch = [s for s in statements if s.get("Principal", {}).get("Service") == "cloudwatch.amazonaws.com"]
    assert len(cloudwatch) == 1
    actions = set(_list(cloudwatch[0]["Action"]))
    assert {"kms:Decrypt", "kms:GenerateDataKey*"} <= actions
    assert cloudwatch[0]["Effect"] == "Allow"


# ---- 2. no reserved concurrency a fresh account cannot give ----------------------------------------


def test_defaults_reserve_no_concurrency(synthesized):
    """A new account's concurrency quota can be far below 100, and Lambda always keeps 100 unreserved:
    with the defaults, no function of the stack reserves anything."""
    reserved = {
        logical_id: props["Properties"]["ReservedConcurrentExecutions"]
        for logical_id, props in synthesized.of_type("AWS::Lambda::Function").items()
        if "ReservedConcurrentExecutions" in props["Properties"]
    }
    assert reserved == {}


# ---- 3. a failed first deploy can be retried --------------------------------------------------------


def test_provider_secret_names_are_unique_per_stack(synthesized):
    secrets = {
        k: s for k, s in synthesized.of_type("AWS::SecretsManager::Secret").items() if k.startswith("ProviderSecrets")
    }
    assert secrets
    for logical_id, secret in secrets.items():
        name = secret["Properties"]["Name"]
        # A fixed name survives a rollback (Retain) and makes the retry fail with "already exists".
        assert not isinstance(name, str), (logical_id, name)
        # The configured name plus a part of the stack id: a new stack (the retry) has another one.
        assert json.dumps({"Ref": "AWS::StackId"}) in json.dumps(name)
        assert name["Fn::Join"][1][0].startswith("quotagate/providers/")


# ---- 4. no silent background function ---------------------------------------------------------------


def _alarms_on(synthesized, metric: str, namespace: str) -> list[dict[str, Any]]:
    return [
        a["Properties"]
        for a in synthesized.of_type("AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") == metric and a["Properties"].get("Namespace") == namespace
    ]


def test_every_function_has_an_errors_alarm(synthesized):
    watched = {
        json.dumps(d["Value"])
        for a in _alarms_on(synthesized, "Errors", "AWS/Lambda")
        for d in a.get("Dimensions", [])
        if d["Name"] == "FunctionName"
    }
    for logical_id in synthesized.of_type("AWS::Lambda::Function"):
        assert json.dumps({"Ref": logical_id}) in watched, logical_id


def _scheduled_functions(synthesized) -> set[str]:
    scheduled = set()
    for rule in synthesized.of_type("AWS::Events::Rule").values():
        if "ScheduleExpression" not in rule["Properties"]:
            continue
        for target in rule["Properties"]["Targets"]:
            scheduled.add(target["Arn"]["Fn::GetAtt"][0])
    return scheduled


def test_every_asynchronous_invocation_has_a_failure_destination_with_a_depth_alarm(synthesized):
    scheduled = _scheduled_functions(synthesized)
    assert len(scheduled) == 2  # the reaper and the period close
    configs = {
        c["Properties"]["FunctionName"]["Ref"]: c["Properties"]
        for c in synthesized.of_type("AWS::Lambda::EventInvokeConfig").values()
    }
    depth_alarmed = {
        json.dumps(d["Value"])
        for a in _alarms_on(synthesized, "ApproximateNumberOfMessagesVisible", "AWS/SQS")
        for d in a.get("Dimensions", [])
        if d["Name"] == "QueueName"
    }
    for function_id in scheduled:
        destination = configs[function_id]["DestinationConfig"]["OnFailure"]["Destination"]
        queue_id = destination["Fn::GetAtt"][0]
        assert synthesized.resources[queue_id]["Type"] == "AWS::SQS::Queue"
        assert json.dumps({"Fn::GetAtt": [queue_id, "QueueName"]}) in depth_alarmed, function_id


# ---- 5. the pipe bisects ----------------------------------------------------------------------------


def test_pipe_bisects_a_failing_batch(synthesized):
    (pipe_resource,) = synthesized.of_type("AWS::Pipes::Pipe").values()
    stream = pipe_resource["Properties"]["SourceParameters"]["DynamoDBStreamParameters"]
    assert stream["OnPartialBatchItemFailure"] == "AUTOMATIC_BISECT"


def test_a_dead_lettered_record_is_still_in_the_stream_to_be_replayed(synthesized):
    """The pipe gives up on a record well before the stream's 24 h retention drops it (at 24 h the
    dead-letter entry would point at records already gone)."""
    (pipe_resource,) = synthesized.of_type("AWS::Pipes::Pipe").values()
    stream = pipe_resource["Properties"]["SourceParameters"]["DynamoDBStreamParameters"]
    assert 0 < stream["MaximumRecordAgeInSeconds"] <= 86_400 - 12 * 3600


def test_usage_docs_tell_how_to_replay_the_pipe_dead_letters():
    text = (paths.ROOT / "docs" / "usage-events.md").read_text()
    assert "UsagePipeDeadLetterQueue" in text and "AUTOMATIC_BISECT" in text and "To replay" in text


# ---- 6. overload is a 429/503 with Retry-After ------------------------------------------------------


def _gateway_responses(synthesized) -> dict[str, dict[str, Any]]:
    return {
        r["Properties"]["ResponseType"]: r["Properties"]
        for r in synthesized.of_type("AWS::ApiGateway::GatewayResponse").values()
    }


@pytest.mark.parametrize("response_type", ["THROTTLED", "INTEGRATION_FAILURE", "DEFAULT_5XX"])
def test_overload_answers_carry_retry_after(synthesized, response_type):
    response = _gateway_responses(synthesized)[response_type]
    assert (
        response["ResponseParameters"]["gatewayresponse.header.Retry-After"] == f"'{edge_errors.RETRY_AFTER_SECONDS}'"
    )


def test_a_throttled_proxy_is_503_in_the_body_both_sdks_read(synthesized):
    response = _gateway_responses(synthesized)["INTEGRATION_FAILURE"]
    assert response["StatusCode"] == "503"
    body = json.loads(response["ResponseTemplates"]["application/json"])
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    assert body["error"]["code"] == "service_unavailable" and body["error"]["message"]


# ---- 7. smaller items -------------------------------------------------------------------------------


def test_sqs_event_sources_have_a_maximum_concurrency(synthesized):
    mappings = synthesized.of_type("AWS::Lambda::EventSourceMapping")
    sqs_mappings = [m for m in mappings.values() if "Fn::GetAtt" in json.dumps(m["Properties"]["EventSourceArn"])]
    assert len(sqs_mappings) == 2
    for mapping in sqs_mappings:
        assert mapping["Properties"]["ScalingConfig"]["MaximumConcurrency"] >= 2


def test_checkov_skip_reason_for_function_concurrency_is_true():
    text = (paths.ROOT / ".checkov.yaml").read_text()
    reason = text.split("CKV_AWS_115", 1)[1].split("- CKV_AWS_115", 1)[0]
    assert "reaper a reservation of 1" not in reason
    assert "MaximumConcurrency" in reason


@pytest.mark.parametrize("action", ["dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:Scan"])
def test_proxy_role_lacks_actions_it_never_uses(synthesized, action):
    actions = {a for s in synthesized.statements_of("quotagate-proxy") for a in _list(s["Action"])}
    assert action not in actions


def test_proxy_role_queries_no_index(synthesized):
    for statement in synthesized.statements_of("quotagate-proxy"):
        if any(a.startswith("dynamodb:") for a in _list(statement["Action"])):
            assert "/index/" not in json.dumps(statement["Resource"]), statement


def test_per_model_and_per_tier_widgets_show_requests_refused_before_a_model_is_known(synthesized):
    from tests.infra.test_infra_observability import _dashboard

    widgets = {w["properties"].get("title"): w["properties"] for w in _dashboard(synthesized)["widgets"]}
    for title, dimension in (("Requests by model", "model"), ("Requests by tier", "tier")):
        series = widgets[title]["metrics"]
        values = [dict(zip(entry[2::2], entry[3::2], strict=False)).get(dimension) for entry in series]
        assert "none" in values, title


# The DynamoDB calls of the proxy's import graph, read from the source: every one is granted, and
# nothing else is. Methods of shared stores that only the keys function calls are named here.
BOTO3_TO_IAM = {
    "get_item": "dynamodb:GetItem",
    "batch_get_item": "dynamodb:BatchGetItem",
    "put_item": "dynamodb:PutItem",
    "update_item": "dynamodb:UpdateItem",
    "delete_item": "dynamodb:DeleteItem",
    "batch_write_item": "dynamodb:BatchWriteItem",
    "query": "dynamodb:Query",
    "scan": "dynamodb:Scan",
    "transact_get_items": "dynamodb:GetItem",
}
TRANSACTION_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
}
KEYS_FUNCTION_ONLY = {
    ("quotagate.dal.keys_store", "put_new"),
    ("quotagate.dal.keys_store", "replace_if_version"),
    ("quotagate.dal.keys_store", "list_by_tenant"),
    ("quotagate.dal.tenants_store", "put_new"),
    ("quotagate.dal.tenants_store", "replace_if_version"),
}


def _module_file(name: str):
    base = paths.ROOT / "layers" / "core" / name.replace(".", "/")
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def _imports(tree, module: str, is_package: bool) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(tree):  # lazy imports inside functions too
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parent = parts if is_package else parts[:-1]
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    return {name for name in found if name.startswith("quotagate")}


def proxy_dynamodb_calls() -> set[tuple[str, str, str]]:
    """(module, function, IAM action) for every DynamoDB call the proxy's code can make."""
    import ast

    pending = [
        name
        for path in (paths.FUNCTIONS_DIR / "proxy").glob("*.py")
        for name in _imports(ast.parse(path.read_text()), "proxy", False)
    ]
    modules: dict[str, Any] = {}
    while pending:
        name = pending.pop()
        if name in modules or (path := _module_file(name)) is None:
            continue
        modules[name] = ast.parse(path.read_text())
        pending += _imports(modules[name], name, path.name == "__init__.py")
    calls = set()
    for name, tree in modules.items():
        if name in PASS_THROUGH_MODULES:
            continue
        transaction_kinds = {
            TRANSACTION_ACTIONS[key.value]
            for node in ast.walk(tree)
            if isinstance(node, ast.Dict)
            for key in node.keys
            if isinstance(key, ast.Constant) and key.value in TRANSACTION_ACTIONS
        }
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for call in ast.walk(function):
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
                    continue
                method = call.func.attr
                if method == "transact_write_items":
                    calls |= {(name, function.name, action) for action in transaction_kinds}
                elif method in BOTO3_TO_IAM:
                    calls.add((name, function.name, BOTO3_TO_IAM[method]))
    return {c for c in calls if (c[0], c[1]) not in KEYS_FUNCTION_ONLY}


# Which table each module of the proxy's graph that calls DynamoDB works on (a new module must be named).
MODULE_TABLES = {
    "quotagate.quota.ledger": "QUOTA",
    "quotagate.dal.circuit_store": "CIRCUIT",
    "quotagate.dal.keys_store": "KEYS",
    "quotagate.dal.tenants_store": "KEYS",
}
# Adapters whose DynamoDB calls are their callers' (counted where the stores call them, e.g.
# keys_store's ``table.query``, which only the keys function reaches).
PASS_THROUGH_MODULES = {"quotagate.dal.item_table"}


def test_proxy_role_grants_exactly_the_dynamodb_calls_its_code_makes(synthesized):
    from quotagate import tables

    used: dict[str, set[str]] = {}
    for module, function, action in proxy_dynamodb_calls():
        assert module in MODULE_TABLES, f"{module}.{function} calls DynamoDB: name its table in MODULE_TABLES"
        used.setdefault(MODULE_TABLES[module], set()).add(action)
    assert used["QUOTA"] >= {"dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:BatchGetItem"}
    statements = synthesized.statements_of("quotagate-proxy")
    granted_tables = set()
    for table_id in synthesized.of_type("AWS::DynamoDB::Table"):
        granted = {a for s in statements if table_id in json.dumps(s["Resource"]) for a in _list(s["Action"])}
        if granted:
            granted_tables.add(table_id)
        for name, actions in used.items():
            if table_id.startswith(f"Data{getattr(tables, name).logical_id}"):
                assert granted == actions, name
    assert len(granted_tables) == len(used)  # no grant on any other table


# ---- 8. the Web Adapter layer version per region ----------------------------------------------------


def test_regions_where_the_adapter_layer_version_is_unverified_get_a_warning():
    from cdk_app import regions

    for region in regions.WEB_ADAPTER_ARM64_LATE:
        message = regions.web_adapter_warning(region, None)
        assert message and "quotagate:webAdapterLayerArn" in message and region in message
        assert regions.web_adapter_warning(region, "arn:aws:lambda:x:1:layer:Copy:3") is None
    assert regions.web_adapter_warning("us-east-1", None) is None
    supported = set(regions.COMMERCIAL_REGIONS) - set(regions.NO_PIPES)
    assert set(regions.WEB_ADAPTER_ARM64_LATE) <= supported


NAME_PROPERTIES = ("Name", "TableName", "LogGroupName", "QueueName", "TopicName", "FunctionName", "RoleName")


def test_nothing_that_survives_a_rollback_has_a_fixed_name(synthesized):
    """A retained resource with a fixed physical name outlives a rolled-back first deploy, and the retry
    then fails creating it again ("already exists"): retained resources have generated names."""
    for logical_id, resource in synthesized.resources.items():
        retained = "Retain" in (resource.get("DeletionPolicy"), resource.get("UpdateReplacePolicy"))
        if not retained:
            continue
        for prop in NAME_PROPERTIES:
            assert prop not in resource.get("Properties", {}), (logical_id, prop)
