"""DynamoDB tables, built from the single definition in quotagate.tables, and least-privilege grants."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from constructs import Construct

from quotagate import tables

if TYPE_CHECKING:
    from collections.abc import Iterable

    from quotagate.tables import TableSpec

# Data-plane actions only (no streams, no control plane). Transactions are authorised per item by
# these same actions, so TransactWriteItems needs nothing more.
READ_ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:Query",
    "dynamodb:ConditionCheckItem",
    "dynamodb:DescribeTable",
)
WRITE_ACTIONS = (
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
)
SCAN_ACTION = "dynamodb:Scan"
# Tables whose content must survive a stack deletion or replacement: the keys are the customers'
# credentials, the quota table holds month-to-date budgets, the usage table the billing record.
# Retained and deletion-protected unless quotagate:retainData=false (test stacks).
RETAINED = frozenset({tables.KEYS.logical_id, tables.QUOTA.logical_id, tables.USAGE.logical_id})


def _attribute(name: str, kind: str = "S") -> dynamodb.Attribute:
    attribute_type = dynamodb.AttributeType.NUMBER if kind == "N" else dynamodb.AttributeType.STRING
    return dynamodb.Attribute(name=name, type=attribute_type)


class DataTables(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, retain_data: bool = True) -> None:
        super().__init__(scope, construct_id)
        self.retain_data = retain_data
        self.tables: dict[str, dynamodb.Table] = {}
        self.specs: dict[str, TableSpec] = {}
        for spec in tables.ALL_TABLES:
            table = dynamodb.Table(
                self,
                spec.logical_id,
                partition_key=_attribute(spec.partition_key),
                sort_key=_attribute(spec.sort_key) if spec.sort_key else None,
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=True
                ),
                time_to_live_attribute=spec.ttl_attribute,
                stream=dynamodb.StreamViewType(spec.stream_view_type) if spec.stream_view_type else None,
                **self.protection(spec.logical_id),
            )
            for index in spec.indexes:
                table.add_global_secondary_index(
                    index_name=index.name,
                    partition_key=_attribute(index.partition_key),
                    sort_key=_attribute(index.sort_key, index.sort_key_type) if index.sort_key else None,
                    projection_type=(
                        dynamodb.ProjectionType.ALL if index.include is None else dynamodb.ProjectionType.INCLUDE
                    ),
                    non_key_attributes=list(index.include) if index.include is not None else None,
                )
            self.tables[spec.logical_id] = table
            self.specs[spec.logical_id] = spec

    def protection(self, logical_id: str) -> dict[str, Any]:
        """Removal policy and deletion protection of a table (also for tables made elsewhere)."""
        protect = self.retain_data and logical_id in RETAINED
        return {
            "removal_policy": RemovalPolicy.RETAIN if protect else RemovalPolicy.DESTROY,
            "deletion_protection": protect,
        }

    @property
    def keys(self) -> dynamodb.Table:
        return self.tables[tables.KEYS.logical_id]

    @property
    def quota(self) -> dynamodb.Table:
        return self.tables[tables.QUOTA.logical_id]

    @property
    def idempotency(self) -> dynamodb.Table:
        return self.tables[tables.IDEMPOTENCY.logical_id]

    @property
    def circuit(self) -> dynamodb.Table:
        return self.tables[tables.CIRCUIT.logical_id]

    @property
    def usage(self) -> dynamodb.Table:
        return self.tables[tables.USAGE.logical_id]

    def table_name_env(self, *specs: TableSpec) -> dict[str, str]:
        """The environment variables carrying the physical names of ``specs``."""
        return {spec.env_var: self.tables[spec.logical_id].table_name for spec in specs}

    def grant_items(self, grantee: iam.IGrantable, spec: TableSpec, actions: Iterable[str]) -> None:
        """Grant exactly ``actions`` on the items of one table (not its indexes)."""
        table = self.tables[spec.logical_id]
        iam.Grant.add_to_principal(grantee=grantee, actions=list(actions), resource_arns=[table.table_arn])

    def grant(self, grantee: iam.IGrantable, spec: TableSpec, *, write: bool = False, scan: bool = False) -> None:
        """Grant data access on one table and its indexes, each named (no ``index/*`` wildcard)."""
        table = self.tables[spec.logical_id]
        actions = [*READ_ACTIONS, *(WRITE_ACTIONS if write else ()), *((SCAN_ACTION,) if scan else ())]
        resources = [table.table_arn, *(f"{table.table_arn}/index/{index.name}" for index in spec.indexes)]
        iam.Grant.add_to_principal(grantee=grantee, actions=actions, resource_arns=resources)
