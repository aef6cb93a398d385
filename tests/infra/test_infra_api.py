"""The stack and its REST API: streaming integration, authorizer, stage, OpenAI-shaped gateway errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match

from quotagate import settings

pytestmark = pytest.mark.infra


def _join(value: Any) -> str:
    """A readable string from an Fn::Join (tokens become their JSON)."""
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(p if isinstance(p, str) else json.dumps(p) for p in parts)
    return value if isinstance(value, str) else json.dumps(value)


def _methods(synthesized: Any) -> dict[str, dict[str, Any]]:
    """HTTP method + path part of the resource -> method properties."""
    resources = synthesized.of_type("AWS::ApiGateway::Resource")
    methods = {}
    for method in synthesized.of_type("AWS::ApiGateway::Method").values():
        props = method["Properties"]
        path = resources[props["ResourceId"]["Ref"]]["Properties"]["PathPart"]
        methods[f"{props['HttpMethod']} {path}"] = props
    return methods


def test_stack_is_named_quotagate(synthesized):
    assert synthesized.stack.stack_name == "Quotagate"
    assert synthesized.stack.artifact_id == "Quotagate"


def test_outputs_expose_keys_function_and_urls(template, synthesized):
    keys_id, _ = synthesized.function("quotagate-keys")
    template.has_output("KeysFunctionName", {"Value": {"Ref": keys_id}})
    outputs = synthesized.json["Outputs"]
    assert {"ApiUrl", "OpenAIBaseUrl", "ProxyFunctionUrl", "ConfigParameterName"} <= set(outputs)
    assert _join(outputs["OpenAIBaseUrl"]["Value"]).endswith("/v1")
    assert _join(outputs["ApiUrl"]["Value"]).startswith("https://")


def test_rest_api_is_regional(template):
    template.resource_count_is("AWS::ApiGateway::RestApi", 1)
    template.has_resource_properties("AWS::ApiGateway::RestApi", {"EndpointConfiguration": {"Types": ["REGIONAL"]}})


def test_api_gateway_caches_no_authorizer_answer_and_requires_no_header(synthesized):
    """Either credential header is accepted, so neither can be a required identity source, and API
    Gateway's cache (keyed by identity sources only) is off: the authorizer caches per credential."""
    authorizers = synthesized.of_type("AWS::ApiGateway::Authorizer")
    assert len(authorizers) == 1
    properties = next(iter(authorizers.values()))["Properties"]
    assert properties["Type"] == "REQUEST"
    assert properties["AuthorizerResultTtlInSeconds"] == 0
    assert "IdentitySource" not in properties
    authorizer_fn = next(
        f["Properties"]["Environment"]["Variables"]
        for f in synthesized.of_type("AWS::Lambda::Function").values()
        if f["Properties"]["Environment"]["Variables"].get("POWERTOOLS_SERVICE_NAME") == "quotagate-authorizer"
    )
    assert authorizer_fn[settings.IDENTITY_SOURCES] == "Authorization,x-api-key"
    assert authorizer_fn[settings.AUTHORIZER_CACHE_SECONDS] == "300"


def test_refusals_tell_the_sdks_not_to_retry(synthesized):
    responses = {
        r["Properties"]["ResponseType"]: r["Properties"].get("ResponseParameters", {})
        for r in synthesized.of_type("AWS::ApiGateway::GatewayResponse").values()
    }
    for refusal in ("UNAUTHORIZED", "ACCESS_DENIED"):
        assert responses[refusal]["gatewayresponse.header.x-should-retry"] == "'false'", refusal
    assert "gatewayresponse.header.x-should-retry" not in responses["THROTTLED"]


def test_routes_stream_from_the_proxy_with_15_minute_timeout(synthesized):
    methods = _methods(synthesized)
    assert set(methods) == {"ANY {proxy+}", "GET health"}
    proxy_id, _ = synthesized.function("quotagate-proxy")
    for props in methods.values():
        integration = props["Integration"]
        assert integration["Type"] == "AWS_PROXY"
        assert integration["ResponseTransferMode"] == "STREAM"
        assert integration["TimeoutInMillis"] == 900000
        uri = _join(integration["Uri"])
        assert "/2021-11-15/functions/" in uri
        assert uri.endswith("/response-streaming-invocations")
        assert proxy_id in uri


def test_v1_requires_the_authorizer_and_health_does_not(synthesized):
    authorizer_id = next(iter(synthesized.of_type("AWS::ApiGateway::Authorizer")))
    methods = _methods(synthesized)
    assert methods["ANY {proxy+}"]["AuthorizationType"] == "CUSTOM"
    assert methods["ANY {proxy+}"]["AuthorizerId"] == {"Ref": authorizer_id}
    assert methods["GET health"]["AuthorizationType"] == "NONE"
    resources = synthesized.of_type("AWS::ApiGateway::Resource")
    v1 = next(k for k, r in resources.items() if r["Properties"]["PathPart"] == "v1")
    proxy = next(r for r in resources.values() if r["Properties"]["PathPart"] == "{proxy+}")
    assert proxy["Properties"]["ParentId"] == {"Ref": v1}


def test_authorizer_invokes_the_authorizer_function(synthesized):
    authorizer_fn, _ = synthesized.function("quotagate-authorizer")
    authorizer = next(iter(synthesized.of_type("AWS::ApiGateway::Authorizer").values()))
    assert authorizer_fn in _join(authorizer["Properties"]["AuthorizerUri"])


def test_stage_traces_logs_json_and_throttles(synthesized):
    stages = synthesized.of_type("AWS::ApiGateway::Stage")
    assert len(stages) == 1
    stage = next(iter(stages.values()))["Properties"]
    assert stage["TracingEnabled"] is True
    access_log = stage["AccessLogSetting"]
    # The log group's ARN without the ":*" suffix (flag apigateway:logGroupDestinationArnWithoutWildcard).
    parts = access_log["DestinationArn"]["Fn::Join"][1]
    assert parts[-2] == ":log-group:"
    log_group_id = parts[-1]["Ref"]
    assert synthesized.resources[log_group_id]["Properties"]["RetentionInDays"] > 0
    fields = json.loads(access_log["Format"])
    assert fields["requestId"] == "$context.requestId" and fields["status"] == "$context.status"
    assert not any("header" in value.lower() for value in fields.values()), "headers may carry keys"
    settings = stage["MethodSettings"][0]
    assert settings["ThrottlingRateLimit"] > 0 and settings["ThrottlingBurstLimit"] > 0
    assert settings["DataTraceEnabled"] is False


@pytest.mark.parametrize(
    ("response_type", "status", "error_type", "code"),
    [
        ("UNAUTHORIZED", "401", "authentication_error", "invalid_api_key"),
        # The authorizer's Deny: a wrong, unknown, revoked or expired key (the openai SDK's
        # AuthenticationError needs a 401); 403 stays for the proxy's "authenticated but not allowed".
        ("ACCESS_DENIED", "401", "authentication_error", "invalid_api_key"),
        ("MISSING_AUTHENTICATION_TOKEN", "404", "not_found_error", "unknown_url"),
        ("THROTTLED", "429", "rate_limit_error", "rate_limit_exceeded"),
        ("REQUEST_TOO_LARGE", "413", "request_too_large", "request_too_large"),
        ("AUTHORIZER_FAILURE", "500", "api_error", "authorizer_error"),
        # A throttled proxy (Lambda's 429 to API Gateway): not a bare 500 (tests/infra/test_infra_deploy_day.py).
        ("INTEGRATION_FAILURE", "503", "overloaded_error", "service_unavailable"),
        ("DEFAULT_4XX", None, "invalid_request_error", None),
        ("DEFAULT_5XX", None, "api_error", None),
    ],
)
def test_gateway_errors_are_read_by_both_sdks(synthesized, response_type, status, error_type, code):
    """Gateway responses cannot vary by path: one body that is Anthropic's error shape (``type``
    ``error``, ``error.type``, ``error.message``) and carries OpenAI's ``code`` and ``param``."""
    responses = [
        r["Properties"]
        for r in synthesized.of_type("AWS::ApiGateway::GatewayResponse").values()
        if r["Properties"]["ResponseType"] == response_type
    ]
    assert len(responses) == 1, response_type
    response = responses[0]
    assert response.get("StatusCode") == status
    template_text = response["ResponseTemplates"]["application/json"]
    # API Gateway substitutes its own (already JSON-quoted) message here.
    body = json.loads(template_text.replace("$context.error.messageString", '"substituted"'))
    assert body["type"] == "error" and set(body) == {"type", "error"}
    assert body["error"]["type"] == error_type
    assert body["error"]["code"] == code
    assert body["error"]["param"] is None
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_integration_permissions_only_for_api_gateway(template):
    permissions = template.find_resources("AWS::Lambda::Permission")
    # Besides API Gateway, only schedule rules may invoke a function (each its own): the reaper's
    # and the usage period close's.
    api = {k: p for k, p in permissions.items() if p["Properties"]["Principal"] == "apigateway.amazonaws.com"}
    others = {k: p["Properties"] for k, p in permissions.items() if k not in api}
    assert all(p["Properties"]["Action"] == "lambda:InvokeFunction" for p in api.values())
    assert [(p["Principal"], "SourceArn" in p) for p in others.values()] == [("events.amazonaws.com", True)] * 2
    template.has_resource_properties(
        "AWS::Lambda::Permission", {"SourceArn": Match.any_value(), "Principal": "apigateway.amazonaws.com"}
    )


def test_every_gateway_response_carries_the_request_id(synthesized):
    # Without it an SDK's AuthenticationError (an edge 401) has no request id to quote.
    responses = list(synthesized.of_type("AWS::ApiGateway::GatewayResponse").values())
    assert responses
    for response in responses:
        parameters = response["Properties"].get("ResponseParameters", {})
        for header in ("x-request-id", "request-id"):  # the openai SDK's, the anthropic SDK's
            assert parameters.get(f"gatewayresponse.header.{header}") == "context.requestId", response["Properties"][
                "ResponseType"
            ]
