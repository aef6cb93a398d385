"""The public entry point: a REGIONAL REST API that streams the proxy's responses.

* ``ANY /v1/{proxy+}``: Lambda REQUEST authorizer, then the proxy (response streaming, 15 min).
* ``GET /health``: the proxy's liveness answer, without authorizer.
* Every error API Gateway produces itself is JSON both the openai and the anthropic SDK read
  (gateway responses, from quotagate.edge_errors).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk_app import nag
from cdk_app.constructs.function import retention
from quotagate import edge_errors
from quotagate.identity_sources import EDGE_AUTHORIZER, identity_source_expressions, parse_identity_sources

if TYPE_CHECKING:
    from cdk_app.context import DeploymentOptions

STREAM_TIMEOUT = Duration.minutes(15)

# Access log record (JSON). No headers, no bodies: credentials never reach the logs.
ACCESS_LOG_FIELDS = {
    "requestId": "$context.requestId",
    "extendedRequestId": "$context.extendedRequestId",
    "requestTime": "$context.requestTimeEpoch",
    "ip": "$context.identity.sourceIp",
    "userAgent": "$context.identity.userAgent",
    "httpMethod": "$context.httpMethod",
    "resourcePath": "$context.resourcePath",
    "path": "$context.path",
    "protocol": "$context.protocol",
    "status": "$context.status",
    "responseLength": "$context.responseLength",
    "responseLatency": "$context.responseLatency",
    "integrationLatency": "$context.integration.latency",
    "integrationStatus": "$context.integration.status",
    "integrationError": "$context.integration.error",
    "principalId": "$context.authorizer.principalId",
    "authorizerStatus": "$context.authorizer.status",
    "authorizerLatency": "$context.authorizer.latency",
    "authorizerError": "$context.authorizer.error",
    "errorType": "$context.error.responseType",
    "errorMessage": "$context.error.message",
    "xrayTraceId": "$context.xrayTraceId",
}


class GatewayApi(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        proxy: lambda_.IFunction,
        authorizer: lambda_.IFunction,
        options: DeploymentOptions,
    ) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = logs.LogGroup(self, "AccessLogs", retention=retention(options.log_retention_days))
        self.api = apigw.RestApi(
            self,
            "Api",
            rest_api_name="quotagate",
            description="Quotagate: OpenAI-compatible, quota-enforcing AI gateway (streaming)",
            # Streams idle out after 5 minutes on REGIONAL endpoints, after 30 s on edge-optimized ones.
            endpoint_configuration=apigw.EndpointConfiguration(types=[apigw.EndpointType.REGIONAL]),
            # Execution logs (errors only) need the account-level CloudWatch role.
            cloud_watch_role=True,
            deploy_options=apigw.StageOptions(
                stage_name=options.stage_name,
                tracing_enabled=True,
                access_log_destination=apigw.LogGroupLogDestination(self.access_logs),
                access_log_format=apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FIELDS)),
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # would log request bodies and Authorization headers
                metrics_enabled=True,
                throttling_rate_limit=options.throttle_rate_limit,
                throttling_burst_limit=options.throttle_burst_limit,
            ),
        )
        # The stack exports the URL itself (ApiUrl, OpenAIBaseUrl); drop RestApi's duplicate output.
        self.api.node.try_remove_child("Endpoint")
        # API Gateway writes execution logs to this group, creating it (without retention) on first use
        # unless it exists: the stack owns it, with a retention, before the stage can log.
        self.execution_logs = logs.LogGroup(
            self,
            "ExecutionLogs",
            log_group_name=f"API-Gateway-Execution-Logs_{self.api.rest_api_id}/{options.stage_name}",
            retention=retention(options.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.api.deployment_stage.node.add_dependency(self.execution_logs)
        # API Gateway caches nothing and requires no header: the authorizer reads every credential
        # header itself and caches by credential (quotagate.identity_sources explains why).
        self.authorizer = apigw.RequestAuthorizer(
            self,
            "Authorizer",
            handler=authorizer,
            identity_sources=identity_source_expressions(EDGE_AUTHORIZER.identity_sources),
            results_cache_ttl=Duration.seconds(EDGE_AUTHORIZER.result_cache_seconds),
        )
        if not EDGE_AUTHORIZER.identity_sources:  # optional without a cache; CDK writes "" otherwise
            cfn_authorizer = self.authorizer.node.default_child
            assert isinstance(cfn_authorizer, apigw.CfnAuthorizer)
            cfn_authorizer.add_property_deletion_override("IdentitySource")
        integration = apigw.LambdaIntegration(
            proxy,
            response_transfer_mode=apigw.ResponseTransferMode.STREAM,
            timeout=STREAM_TIMEOUT,
            allow_test_invoke=False,
        )
        v1 = self.api.root.add_resource("v1")
        self.proxy_method = v1.add_resource("{proxy+}").add_method(
            "ANY",
            integration,
            authorizer=self.authorizer,
            authorization_type=apigw.AuthorizationType.CUSTOM,
        )
        self.health_method = self.api.root.add_resource("health").add_method("GET", integration)
        # One body both SDKs read, whatever the path (see quotagate.edge_errors).
        identity_sources = parse_identity_sources(options.identity_sources)
        for name, response in edge_errors.gateway_responses(identity_sources).items():
            self.api.add_gateway_response(
                f"{name.title().replace('_', '')}Response",
                type=apigw.ResponseType.of(name),
                status_code=None if response.status is None else str(response.status),
                templates={"application/json": response.template()},
                response_headers={
                    **{header: "context.requestId" for header in edge_errors.REQUEST_ID_HEADERS},
                    **({"Retry-After": f"'{edge_errors.RETRY_AFTER_SECONDS}'"} if response.retry_after else {}),
                    # Static values are quoted in API Gateway's mapping expressions.
                    **{header: f"'{value}'" for header, value in edge_errors.no_retry_headers(response.status).items()},
                },
            )
        self._acknowledge()

    @property
    def url(self) -> str:
        return self.api.url

    def _acknowledge(self) -> None:
        nag.acknowledge(
            self.api,
            "AwsSolutions-APIG2",
            "Requests are validated by the proxy, which answers invalid input with OpenAI-shaped errors "
            "(400/413) before any quota is reserved; an API Gateway request validator would answer in "
            "its own format and cannot express the OpenAI request schemas.",
        )
        nag.acknowledge(
            self.api.deployment_stage,
            "AwsSolutions-APIG3",
            "No WAF web ACL by default: every /v1 request is authenticated by the Lambda authorizer, "
            "throttled by the stage and quota-limited per key in DynamoDB. Operators who want WAF "
            "associate their own web ACL with the stage; it does not change this stack.",
        )
        nag.acknowledge(
            self.api,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonAPIGatewayPushToCloudWatchLogs]",
            "The account-level role API Gateway uses to write execution logs: API Gateway names the "
            "per-stage log groups itself, and this AWS-managed policy is the documented grant for it.",
        )
        nag.acknowledge(
            self.proxy_method,
            "AwsSolutions-COG4",
            "Clients authenticate with gateway-issued API keys or their own IdP's JWTs, checked by the "
            "Lambda REQUEST authorizer; a Cognito user pool cannot hold either kind of credential.",
        )
        nag.acknowledge(
            self.health_method,
            "AwsSolutions-APIG4",
            "GET /health is the unauthenticated liveness probe: it returns a fixed status, reads no "
            "data and never reaches a model; stage throttling bounds its use.",
        )
        nag.acknowledge(
            self.health_method,
            "AwsSolutions-COG4",
            "GET /health is the unauthenticated liveness probe (see APIG4): no authorizer of any kind, "
            "so no Cognito user pool either.",
        )
