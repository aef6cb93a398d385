"""The shape every Quotagate Lambda function shares.

arm64, Python 3.13, the shared layers, X-Ray active tracing, JSON logs into an explicit log group
with a retention, and an own role that starts empty: the function may write to its own log group
and send traces, and every other permission is granted explicitly by the construct that owns it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk_app import nag, paths
from cdk_app.context import ContextError, DeploymentOptions
from quotagate import settings

if TYPE_CHECKING:  # these modules import this one
    from collections.abc import Mapping
    from pathlib import Path

    from cdk_app.constructs.config import GatewayConfigParameter
    from cdk_app.constructs.data import DataTables
    from cdk_app.constructs.layers import SharedLayers
    from quotagate.tables import TableSpec

RUNTIME = lambda_.Runtime.PYTHON_3_13
ARCHITECTURE = lambda_.Architecture.ARM_64
METRICS_NAMESPACE = "Quotagate"
ASSET_EXCLUDES = ["**/__pycache__", "**/*.pyc", "**/.pytest_cache"]

_RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


def retention(days: int) -> logs.RetentionDays:
    try:
        return _RETENTION[days]
    except KeyError:
        raise ContextError(f"log retention must be one of {sorted(_RETENTION)} days, got {days}") from None


class GatewayFunction(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code_dir: Path,
        handler: str,
        service: str,
        description: str,
        layers: list[lambda_.ILayerVersion],
        environment: dict[str, str],
        log_retention_days: int,
        timeout: Duration,
        memory_size: int,
        reserved_concurrency: int = 0,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(self, "LogGroup", retention=retention(log_retention_days))
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{service}: own log group, X-Ray, and the grants made explicitly by the stack",
        )
        self.function = lambda_.Function(
            self,
            "Function",
            description=description,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=handler,
            code=lambda_.Code.from_asset(str(code_dir), exclude=ASSET_EXCLUDES),
            layers=layers,
            role=self.role,
            environment={
                "POWERTOOLS_SERVICE_NAME": service,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                **environment,
            },
            timeout=timeout,
            memory_size=memory_size,
            # 0: no reservation (the function shares the account's unreserved pool).
            reserved_concurrent_executions=reserved_concurrency or None,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            application_log_level_v2=lambda_.ApplicationLogLevel.INFO,
            system_log_level_v2=lambda_.SystemLogLevel.WARN,
        )
        # Only its own log group (no logs:CreateLogGroup, no other groups).
        self.log_group.grant_write(self.role)
        nag.acknowledge_function_baseline(self)


class StackFunction(Construct):
    """Base of the stack's function constructs, which it builds alike:
    ``Cls(stack, id, data=..., config=..., layers=..., options=...)``.

    Each is one :class:`GatewayFunction` (``handler``, construct id "Handler"; ``function`` is its
    Lambda function) built from ``functions/<DIRECTORY>`` as the service ``quotagate-<DIRECTORY>``,
    on ``extra_layers()`` then the shared layers. Its environment holds ``ENVIRONMENT``, the names of
    ``TABLES``, the gateway configuration parameter's name and, with ``JWT`` (functions that
    authenticate callers), the JWT settings that are configured and the identity sources. Its role
    gets the grants of ``grant_tables``, then read access to the parameter;
    ``add_extras`` adds what else the function has, last.
    """

    DIRECTORY: ClassVar[str]
    HANDLER: ClassVar[str] = "handler.lambda_handler"
    DESCRIPTION: ClassVar[str]
    ENVIRONMENT: ClassVar[Mapping[str, str]] = {}
    TABLES: ClassVar[tuple[TableSpec, ...]]
    JWT: ClassVar[bool] = False
    TIMEOUT: ClassVar[Duration]
    MEMORY_SIZE: ClassVar[int]

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
        self.options = options
        self.handler = GatewayFunction(
            self,
            "Handler",
            code_dir=paths.FUNCTIONS_DIR / self.DIRECTORY,
            handler=self.HANDLER,
            service=f"quotagate-{self.DIRECTORY}",
            description=self.DESCRIPTION,
            layers=[*self.extra_layers(), *layers.all],
            environment={
                **self.ENVIRONMENT,
                **data.table_name_env(*self.TABLES),
                settings.CONFIG_PARAMETER: config.parameter_name,
                **({**options.jwt_env, **options.identity_source_env} if self.JWT else {}),
            },
            log_retention_days=options.log_retention_days,
            timeout=self.TIMEOUT,
            memory_size=self.MEMORY_SIZE,
            reserved_concurrency=self.reserved_concurrency(options),
        )
        self.function = self.handler.function
        self.grant_tables(data)
        config.grant_read(self.function)
        self.add_extras()

    def extra_layers(self) -> list[lambda_.ILayerVersion]:
        """Layers before the shared ones (made in this construct's scope)."""
        return []

    def reserved_concurrency(self, options: DeploymentOptions) -> int:
        """Reserved concurrent executions (0: none)."""
        return 0

    def grant_tables(self, data: DataTables) -> None:
        """Grant ``function`` the table access it needs (each grant names its table)."""
        raise NotImplementedError

    def add_extras(self) -> None:
        """What this function has beyond the shape every function shares (default: nothing)."""
