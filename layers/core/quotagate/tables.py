"""DynamoDB table definitions, written once: the CDK stack and local mode both build from these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from quotagate import settings


@dataclass(frozen=True)
class Index:
    name: str
    partition_key: str
    sort_key: str | None = None
    sort_key_type: Literal["S", "N"] = "S"
    # Non-key attributes the index carries (INCLUDE); None: every attribute (ALL).
    include: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TableSpec:
    logical_id: str  # CDK construct id
    env_var: str  # environment variable that carries the physical name
    local_name: str  # name used by local mode and tests
    partition_key: str
    sort_key: str | None = None
    ttl_attribute: str | None = None
    indexes: tuple[Index, ...] = field(default_factory=tuple)
    stream_view_type: str | None = None  # "NEW_IMAGE" etc.: the table has a DynamoDB stream

    def name(self) -> str:
        return settings.table_name(self.env_var, self.local_name)


KEYS = TableSpec(
    logical_id="KeysTable",
    env_var=settings.KEYS_TABLE,
    local_name="quotagate-keys",
    partition_key="key_id",
    indexes=(Index("by_tenant", "tenant", "key_id"),),
)
# Quota windows and per-request reservations; every item expires (TTL is clean-up only).
# ``reserved``: a sparse index of the reservations still open. Only a reservation item in status
# ``reserved`` carries ``reserved_shard``/``reserved_at`` (settling or expiring it removes them), so
# the reaper queries just the open ones, oldest first, and never scans. Shards spread the index's
# writes over several partitions (one index partition absorbs about 1,000 writes/s).
RESERVED_INDEX = Index("reserved", "reserved_shard", "reserved_at", sort_key_type="N", include=("charges",))
QUOTA = TableSpec(
    logical_id="QuotaTable",
    env_var=settings.QUOTA_TABLE,
    local_name="quotagate-quota",
    partition_key="pk",
    sort_key="sk",
    ttl_attribute="expires_at",
    indexes=(RESERVED_INDEX,),
    # The usage outbox: the EventBridge Pipe reads settled reservations from this stream.
    stream_view_type="NEW_IMAGE",
)
# Powertools idempotency records for the keys function.
IDEMPOTENCY = TableSpec(
    logical_id="IdempotencyTable",
    env_var=settings.IDEMPOTENCY_TABLE,
    local_name="quotagate-idempotency",
    partition_key="id",
    ttl_attribute="expiration",
)

# Circuit-breaker state per upstream target, shared by every proxy container (TTL is clean-up only:
# a missing item is a closed circuit).
CIRCUIT = TableSpec(
    logical_id="CircuitTable",
    env_var=settings.CIRCUIT_TABLE,
    local_name="quotagate-circuits",
    partition_key="target",
    ttl_attribute="expires_at",
)

# Usage aggregates (tenant, tenant+key, tenant+model, by hour/day/month), the rollup's per-request
# markers, and threshold / period-close markers (only markers expire). Tenant aggregates carry
# ``period`` (e.g. ``day#2026-11-30``) so that the period close finds every tenant of a period
# through the sparse index ``by_period`` instead of a scan.
USAGE = TableSpec(
    logical_id="UsageTable",
    env_var=settings.USAGE_TABLE,
    local_name="quotagate-usage",
    partition_key="pk",
    sort_key="sk",
    ttl_attribute="expires_at",
    indexes=(Index("by_period", "period", "tenant"),),
)

ALL_TABLES: tuple[TableSpec, ...] = (KEYS, QUOTA, IDEMPOTENCY, CIRCUIT, USAGE)


def create_table_request(spec: TableSpec) -> dict[str, Any]:
    """Arguments for ``dynamodb.create_table`` (local mode and tests); mirrors the CDK definition."""
    attributes = {spec.partition_key: "S"}
    schema = [{"AttributeName": spec.partition_key, "KeyType": "HASH"}]
    if spec.sort_key:
        attributes[spec.sort_key] = "S"
        schema.append({"AttributeName": spec.sort_key, "KeyType": "RANGE"})
    gsis = []
    for index in spec.indexes:
        attributes[index.partition_key] = "S"
        index_schema = [{"AttributeName": index.partition_key, "KeyType": "HASH"}]
        if index.sort_key:
            attributes[index.sort_key] = index.sort_key_type
            index_schema.append({"AttributeName": index.sort_key, "KeyType": "RANGE"})
        projection: dict[str, Any] = {"ProjectionType": "ALL"}
        if index.include is not None:
            projection = {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(index.include)}
        gsis.append({"IndexName": index.name, "KeySchema": index_schema, "Projection": projection})
    request: dict[str, Any] = {
        "TableName": spec.name(),
        "KeySchema": schema,
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": t} for a, t in sorted(attributes.items())],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if gsis:
        request["GlobalSecondaryIndexes"] = gsis
    if spec.stream_view_type:
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": spec.stream_view_type}
    return request


def create_all(dynamodb_client: Any) -> None:
    """Create every table (and its TTL setting) if missing. Used by local mode and tests."""
    existing = set(dynamodb_client.list_tables().get("TableNames", []))
    for spec in ALL_TABLES:
        if spec.name() in existing:
            continue
        dynamodb_client.create_table(**create_table_request(spec))
        if spec.ttl_attribute:
            dynamodb_client.update_time_to_live(
                TableName=spec.name(),
                TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute},
            )
