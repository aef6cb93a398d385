"""The Lambda REQUEST authorizer: gateway API keys and customer IdP JWTs -> identity context."""

from __future__ import annotations

from aws_cdk import Duration
from constructs import Construct

from cdk_app import paths
from cdk_app.constructs.config import GatewayConfigParameter
from cdk_app.constructs.data import DataTables
from cdk_app.constructs.function import GatewayFunction
from cdk_app.constructs.layers import SharedLayers
from cdk_app.context import DeploymentOptions
from quotagate import settings, tables


class AuthorizerFunction(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        data: DataTables,
        config: GatewayConfigParameter,
        layers: SharedLayers,
        options: DeploymentOptions,
    ) -> None:
        super().__init__(scope, construct_id)
        self.handler = GatewayFunction(
            self,
            "Handler",
            code_dir=paths.FUNCTIONS_DIR / "authorizer",
            handler="handler.lambda_handler",
            service="quotagate-authorizer",
            description="Quotagate REQUEST authorizer: API keys and IdP JWTs to an identity context",
            layers=layers.all,
            environment={
                **data.table_name_env(tables.KEYS),
                settings.CONFIG_PARAMETER: config.parameter_name,
                **options.jwt_env,  # only the JWT settings that are configured
            },
            log_retention_days=options.log_retention_days,
            timeout=Duration.seconds(10),
            # More memory is more CPU: signature checks and cold starts sit on every uncached request.
            memory_size=512,
        )
        self.function = self.handler.function
        data.grant(self.function, tables.KEYS)  # read only
        config.grant_read(self.function)
