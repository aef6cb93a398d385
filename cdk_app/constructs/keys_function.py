"""The key-management Lambda that a SaaS backend invokes with IAM (create/list/revoke/rotate keys)."""

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


class KeysFunction(Construct):
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
            code_dir=paths.FUNCTIONS_DIR / "keys",
            handler="handler.lambda_handler",
            service="quotagate-keys",
            description="Quotagate key management: create, list, revoke, rotate, change plan (IAM invoke)",
            layers=layers.all,
            environment={
                **data.table_name_env(tables.KEYS, tables.IDEMPOTENCY),
                settings.CONFIG_PARAMETER: config.parameter_name,
            },
            log_retention_days=options.log_retention_days,
            timeout=Duration.seconds(30),
            memory_size=512,
        )
        self.function = self.handler.function
        # Keys and idempotency records only; an operator tool may list every key, hence Scan.
        data.grant(self.function, tables.KEYS, write=True, scan=True)
        data.grant(self.function, tables.IDEMPOTENCY, write=True)
        config.grant_read(self.function)
