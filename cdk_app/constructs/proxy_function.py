"""The streaming proxy: an ASGI app (functions/proxy) behind the Lambda Web Adapter.

The adapter (a layer, started through AWS_LAMBDA_EXEC_WRAPPER) runs ``run.sh``, waits until the
app answers on the readiness path, then forwards each invocation as HTTP and streams the response
(AWS_LWA_INVOKE_MODE=response_stream; any other value silently falls back to buffering).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import ArnFormat, Duration, Fn, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_

from cdk_app import nag
from cdk_app.constructs.function import StackFunction
from cdk_app.context import SECRETS_PREFIX, DeploymentOptions
from quotagate import tables

if TYPE_CHECKING:
    from cdk_app.constructs.data import DataTables

# Lambda Web Adapter v1.0.0, arm64, published by AWS in the aws partition (cdk_app/regions.py);
# quotagate:webAdapterLayerArn names another copy.
WEB_ADAPTER_LAYER_ARN = "arn:aws:lambda:${AWS::Region}:753240598075:layer:LambdaAdapterLayerArm64:27"
APP_PORT = "8000"
READINESS_PATH = "/health"
WEB_ADAPTER_ENV = {
    "AWS_LAMBDA_EXEC_WRAPPER": "/opt/bootstrap",
    "AWS_LWA_INVOKE_MODE": "response_stream",
    "AWS_LWA_PORT": APP_PORT,
    "PORT": APP_PORT,
    "AWS_LWA_READINESS_CHECK_PATH": READINESS_PATH,
}

# Reserve, top up and settle are transactions of Puts and Updates (authorised per item as PutItem and
# UpdateItem); the remaining-quota headers read windows in batches.
PROXY_QUOTA_ACTIONS = ("dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem")
# Circuit-breaker state, shared by containers: batched reads, conditional updates.
PROXY_CIRCUIT_ACTIONS = ("dynamodb:BatchGetItem", "dynamodb:UpdateItem")
# Key and tenant records by id (the function URL path authenticates in the proxy): read only.
PROXY_KEYS_ACTIONS = ("dynamodb:GetItem",)


class ProxyFunction(StackFunction):
    DIRECTORY = "proxy"
    HANDLER = "run.sh"
    DESCRIPTION = "Quotagate proxy: quota, routing and streaming to model providers (Web Adapter)"
    ENVIRONMENT = WEB_ADAPTER_ENV
    TABLES = (tables.KEYS, tables.QUOTA, tables.CIRCUIT)
    JWT = True  # the function URL path authenticates in the proxy itself, with the same settings
    TIMEOUT = Duration.minutes(15)  # the longest a stream may last
    MEMORY_SIZE = 1024

    def reserved_concurrency(self, options: DeploymentOptions) -> int:
        # The cap on concurrent requests (each open stream holds one execution for its whole life).
        return options.proxy_concurrency

    def extra_layers(self) -> list[lambda_.ILayerVersion]:
        arn = self.options.web_adapter_layer_arn or Fn.sub(WEB_ADAPTER_LAYER_ARN)
        return [lambda_.LayerVersion.from_layer_version_arn(self, "WebAdapter", arn)]

    def grant_tables(self, data: DataTables) -> None:
        # Exactly the calls the proxy's code makes (tests/infra/test_infra_deploy_day.py reads them from
        # its import graph): no deletes, no batch writes, no index queries.
        data.grant_items(self.function, tables.QUOTA, PROXY_QUOTA_ACTIONS)
        data.grant_items(self.function, tables.CIRCUIT, PROXY_CIRCUIT_ACTIONS)
        data.grant_items(self.function, tables.KEYS, PROXY_KEYS_ACTIONS)

    def add_extras(self) -> None:
        provider_secrets = Stack.of(self).format_arn(
            service="secretsmanager",
            resource="secret",
            resource_name=f"{SECRETS_PREFIX}*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[provider_secrets])
        )
        nag.acknowledge(
            self.handler,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>"
            f":secret:{SECRETS_PREFIX}*]",
            "Provider API keys are secrets the operator creates under quotagate/providers/ (one per "
            "provider, named in the gateway configuration); Secrets Manager appends a random suffix "
            "to every secret ARN, so the prefix needs a trailing wildcard. Read-only (GetSecretValue).",
        )

        # Bedrock targets (provider type "bedrock"): Converse needs bedrock:InvokeModel, ConverseStream
        # bedrock:InvokeModelWithResponseStream, on foundation models and on this account's inference
        # profiles (a cross-region profile also needs the models in the regions it routes to).
        stack = Stack.of(self)
        foundation_models = f"arn:{stack.partition}:bedrock:*::foundation-model/*"
        inference_profiles = stack.format_arn(service="bedrock", resource="inference-profile", resource_name="*")
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"],
                resources=[foundation_models, inference_profiles],
            )
        )
        nag.acknowledge(
            self.handler,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:bedrock:*::foundation-model/*]",
            "Which Bedrock models the proxy calls is gateway configuration (an SSM parameter that "
            "changes without a deploy); cross-region inference profiles route to foundation models "
            "in several regions. Invoke only, no management actions.",
        )
        nag.acknowledge(
            self.handler,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:bedrock:<AWS::Region>:<AWS::AccountId>"
            ":inference-profile/*]",
            "Which inference profiles the proxy calls is gateway configuration (an SSM parameter that "
            "changes without a deploy); limited to this account and region. Invoke only.",
        )

        # For callers inside the account: IAM-signed requests, streamed. No authorizer runs on this
        # path, so the proxy authenticates the API key or JWT itself. Not in every region
        # (cdk_app/regions.py): quotagate:functionUrl=false leaves it out.
        self.url: lambda_.FunctionUrl | None = None
        if not self.options.function_url:
            return
        self.url = self.function.add_function_url(
            auth_type=lambda_.FunctionUrlAuthType.AWS_IAM,
            invoke_mode=lambda_.InvokeMode.RESPONSE_STREAM,
        )
