"""The Quotagate stack: one stack, composed of one construct per concern."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from aws_cdk import Annotations, Aws, CfnOutput, CfnRule, CfnRuleAssertion, Fn, Stack, Token

from cdk_app import regions
from cdk_app.constructs.api import GatewayApi
from cdk_app.constructs.authorizer import AuthorizerFunction
from cdk_app.constructs.config import GatewayConfigParameter
from cdk_app.constructs.data import DataTables
from cdk_app.constructs.keys_function import KeysFunction
from cdk_app.constructs.layers import SharedLayers
from cdk_app.constructs.observability import Observability
from cdk_app.constructs.provider_secrets import ProviderSecrets
from cdk_app.constructs.proxy_function import ProxyFunction
from cdk_app.constructs.settlements import SettlementRecovery
from cdk_app.constructs.usage_pipeline import UsagePipeline
from cdk_app.context import DeploymentOptions
from quotagate import provider_secrets, settings

if TYPE_CHECKING:
    from constructs import Construct

STACK_NAME = "Quotagate"


class QuotagateStack(Stack):
    def __init__(self, scope: Construct, construct_id: str = STACK_NAME, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        options = DeploymentOptions.from_node(self.node)
        self.options = options
        self.termination_protection = options.termination_protection
        self._check_region(options)

        self.data = DataTables(self, "Data", retain_data=options.retain_data)
        self.config = GatewayConfigParameter(self, "Config", config_file=options.config_file)
        self.layers = SharedLayers(self, "Layers")
        data, config, layers = self.data, self.config, self.layers
        self.keys = KeysFunction(self, "Keys", data=data, config=config, layers=layers, options=options)
        self.authorizer = AuthorizerFunction(
            self, "Authorizer", data=data, config=config, layers=layers, options=options
        )
        self.proxy = ProxyFunction(self, "Proxy", data=data, config=config, layers=layers, options=options)
        self.provider_secrets = ProviderSecrets(
            self,
            "ProviderSecrets",
            config=config.config,
            kms_key_arn=options.secrets_kms_key_arn,
        )
        self.provider_secrets.grant_read(self.proxy.function)
        self.proxy.function.add_environment(settings.PROVIDER_SECRET_NAMES, self.provider_secrets.names_json())
        self.settlements = SettlementRecovery(self, "Settlements", data=data, layers=layers, options=options)
        self.settlements.connect_proxy(self.proxy.function)
        self.api = GatewayApi(
            self, "Gateway", proxy=self.proxy.function, authorizer=self.authorizer.function, options=options
        )
        self.usage = UsagePipeline(self, "Usage", data=data, layers=layers, options=options)
        self.observability = Observability(
            self,
            "Observability",
            api=self.api.api,
            functions={
                "Proxy": self.proxy.function,
                "Authorizer": self.authorizer.function,
                "Keys": self.keys.function,
            },
            config=config.config,
            reserved_concurrency={
                "Proxy": options.proxy_concurrency,
                "Authorizer": options.authorizer_concurrency,
                "Keys": options.keys_concurrency,
            },
            alarm_email=options.alarm_email,
        )

        # Output ids are stable names that tools look up (the CLI finds the keys function by
        # "KeysFunctionName" in the outputs of the stack named Quotagate).
        CfnOutput(self, "ApiUrl", value=self.api.url, description="Base URL of the REST API stage")
        CfnOutput(
            self,
            "OpenAIBaseUrl",
            value=f"{self.api.url}v1",
            description="base_url for OpenAI-compatible clients",
        )
        CfnOutput(
            self,
            "KeysFunctionName",
            value=self.keys.function.function_name,
            description="Key management function (invoke with lambda:InvokeFunction)",
        )
        CfnOutput(self, "KeysFunctionArn", value=self.keys.function.function_arn)
        CfnOutput(
            self,
            "EventBusName",
            value=self.usage.bus.event_bus_name,
            description="EventBridge bus of the usage events (Request Settled, Budget Threshold Crossed, "
            "Usage Period Closed)",
        )
        CfnOutput(self, "EventBusArn", value=self.usage.bus.event_bus_arn)
        if self.proxy.url is not None:
            CfnOutput(
                self,
                "ProxyFunctionUrl",
                value=self.proxy.url.url,
                description="Streaming function URL of the proxy (AWS_IAM auth), for callers inside the account",
            )
        CfnOutput(self, "ConfigParameterName", value=self.config.parameter_name)
        CfnOutput(
            self,
            provider_secrets.STACK_OUTPUT,
            value=self.provider_secrets.names_json(),
            description="Provider secrets: configured name -> the name this stack created "
            "(quotagate providers set-key finds them here)",
        )
        for spec_id, table in self.data.tables.items():
            CfnOutput(self, f"{spec_id}Name", value=table.table_name)
        CfnOutput(
            self,
            "AlarmTopicArn",
            value=self.observability.topic.topic_arn,
            description="SNS topic every alarm notifies (subscribe more endpoints to it)",
        )
        # Last: alarms for every table and dead-letter queue any construct above has made.
        self.observability.watch_stack(self)

    def _check_region(self, options: DeploymentOptions) -> None:
        """Fail synthesis in a region the stack cannot be deployed to (an env-agnostic stack learns the
        region from the CDK CLI's CDK_DEFAULT_REGION), and CloudFormation before it creates anything."""
        region = self.region if not Token.is_unresolved(self.region) else os.environ.get("CDK_DEFAULT_REGION")
        if region:
            regions.check_region(region, function_url=options.function_url)
            warning = regions.web_adapter_warning(region, options.web_adapter_layer_arn)
            if warning:
                Annotations.of(self).add_warning_v2("quotagate:webAdapterLayerVersion", warning)
        supported = list(regions.supported_regions(options.function_url))
        CfnRule(
            self,
            "SupportedRegion",
            assertions=[
                CfnRuleAssertion(
                    assert_=Fn.condition_contains(supported, Aws.REGION),
                    assert_description=(
                        "Quotagate deploys to these regions only"
                        + ("" if not options.function_url else " (with quotagate:functionUrl=false to more)")
                        + ": "
                        + ", ".join(supported)
                    ),
                )
            ],
        )
