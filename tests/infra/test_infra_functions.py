"""The functions: runtime, architecture, tracing, logging, the Web Adapter setup of the proxy."""

from __future__ import annotations

import pytest

from cdk_app.context import JWT_CONTEXT_TO_ENV
from quotagate import settings, tables

pytestmark = pytest.mark.infra

SERVICES = (
    "quotagate-keys",
    "quotagate-authorizer",
    "quotagate-proxy",
    "quotagate-settlements",
    "quotagate-reaper",
    "quotagate-usage_rollup",
    "quotagate-usage_period_close",
)
LWA_LAYER = "arn:aws:lambda:${AWS::Region}:753240598075:layer:LambdaAdapterLayerArm64:27"


def test_exactly_these_functions(template):
    template.resource_count_is("AWS::Lambda::Function", len(SERVICES))


@pytest.mark.parametrize("service", SERVICES)
def test_function_is_arm64_python313_traced_with_json_logs(synthesized, service):
    _, props = synthesized.function(service)
    assert props["Architectures"] == ["arm64"]
    assert props["Runtime"] == "python3.13"
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert props["LoggingConfig"]["LogFormat"] == "JSON"
    log_group_id = props["LoggingConfig"]["LogGroup"]["Ref"]
    log_group = synthesized.resources[log_group_id]
    assert log_group["Type"] == "AWS::Logs::LogGroup"
    assert log_group["Properties"]["RetentionInDays"] > 0


@pytest.mark.parametrize("service", SERVICES)
def test_function_has_deps_and_core_layers(synthesized, service):
    _, props = synthesized.function(service)
    layer_refs = [layer["Ref"] for layer in props["Layers"] if isinstance(layer, dict) and "Ref" in layer]
    descriptions = sorted(synthesized.resources[ref]["Properties"]["Description"] for ref in layer_refs)
    assert len(descriptions) == 2
    assert descriptions[0].startswith("Quotagate core library")
    assert descriptions[1].startswith("Quotagate third-party runtime dependencies")


def test_layers_are_arm64_python313(template):
    template.all_resources_properties(
        "AWS::Lambda::LayerVersion",
        {"CompatibleArchitectures": ["arm64"], "CompatibleRuntimes": ["python3.13"]},
    )


@pytest.mark.parametrize(
    ("service", "handler", "table_vars"),
    [
        (
            "quotagate-keys",
            "handler.lambda_handler",
            {tables.KEYS.env_var, tables.IDEMPOTENCY.env_var, tables.USAGE.env_var},
        ),
        ("quotagate-authorizer", "handler.lambda_handler", {tables.KEYS.env_var}),
        ("quotagate-proxy", "run.sh", {tables.KEYS.env_var, tables.QUOTA.env_var, tables.CIRCUIT.env_var}),
    ],
)
def test_handler_and_environment(synthesized, service, handler, table_vars):
    _, props = synthesized.function(service)
    assert props["Handler"] == handler
    variables = props["Environment"]["Variables"]
    present_tables = {spec.env_var for spec in tables.ALL_TABLES} & set(variables)
    assert present_tables == table_vars
    for spec in tables.ALL_TABLES:
        if spec.env_var in table_vars:
            assert variables[spec.env_var] == {"Ref": f"Data{spec.logical_id}{_suffix(synthesized, spec)}"}
    config_id = next(iter(synthesized.of_type("AWS::SSM::Parameter")))
    assert variables[settings.CONFIG_PARAMETER] == {"Ref": config_id}
    assert variables["POWERTOOLS_SERVICE_NAME"] == service


def _suffix(synthesized, spec) -> str:
    prefix = f"Data{spec.logical_id}"
    matches = [k[len(prefix) :] for k in synthesized.of_type("AWS::DynamoDB::Table") if k.startswith(prefix)]
    assert len(matches) == 1
    return matches[0]


def test_jwt_settings_absent_when_not_configured(synthesized):
    jwt_vars = set(JWT_CONTEXT_TO_ENV.values())
    assert settings.JWT_ISSUER in jwt_vars and settings.JWT_TENANT_CLAIM in jwt_vars
    for service in SERVICES:
        _, props = synthesized.function(service)
        assert not jwt_vars & set(props["Environment"]["Variables"]), service


def test_proxy_runs_behind_the_web_adapter_in_streaming_mode(synthesized):
    _, props = synthesized.function("quotagate-proxy")
    variables = props["Environment"]["Variables"]
    # Any other value (e.g. "RESPONSE_STREAM") silently falls back to buffered responses.
    assert variables["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert variables["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert variables["AWS_LWA_PORT"] == variables["PORT"] == "8000"
    assert variables["AWS_LWA_READINESS_CHECK_PATH"] == "/health"
    assert {"Fn::Sub": LWA_LAYER} in props["Layers"]
    assert props["Timeout"] == 900
    assert props["MemorySize"] == 1024


def test_other_functions_do_not_use_the_web_adapter(synthesized):
    for service in ("quotagate-keys", "quotagate-authorizer"):
        _, props = synthesized.function(service)
        assert {"Fn::Sub": LWA_LAYER} not in props["Layers"]
        assert "AWS_LAMBDA_EXEC_WRAPPER" not in props["Environment"]["Variables"]


def test_proxy_function_url_is_iam_authenticated_and_streams(synthesized, template):
    proxy_id, _ = synthesized.function("quotagate-proxy")
    template.resource_count_is("AWS::Lambda::Url", 1)
    template.has_resource_properties(
        "AWS::Lambda::Url",
        {
            "AuthType": "AWS_IAM",
            "InvokeMode": "RESPONSE_STREAM",
            "TargetFunctionArn": {"Fn::GetAtt": [proxy_id, "Arn"]},
        },
    )


def test_proxy_asset_has_an_executable_start_script(synthesized):
    _, props = synthesized.function("quotagate-proxy")
    asset = synthesized.asset_dir(props["Code"]["S3Key"])
    run_sh = asset / props["Handler"]
    assert run_sh.is_file()
    assert run_sh.stat().st_mode & 0o111, "the Web Adapter executes the handler script"
    assert (asset / "app.py").is_file()


@pytest.mark.parametrize("service", SERVICES)
def test_function_assets_carry_no_bytecode(synthesized, service):
    _, props = synthesized.function(service)
    asset = synthesized.asset_dir(props["Code"]["S3Key"])
    assert asset.is_dir()
    assert not list(asset.rglob("__pycache__")) and not list(asset.rglob("*.pyc"))
